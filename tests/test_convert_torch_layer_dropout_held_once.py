"""A converted torch encoder layer holds its feed-forward dropout once: the block reads it from the layer at each
use instead of keeping it as its own child, so it has one name and an nn.Identity swapped in leaves no old Dropout
behind."""

from torch import nn

from approxdrop import convert


def converted_layer():
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    model = nn.Sequential(layer)
    assert convert(model).converted == ["0.ard_ffn"]
    return model, layer


def test_the_layers_feed_forward_dropout_has_one_name_after_convert():
    """Only ``0.dropout`` reaches it; the block built around it has dropped its own entry for it."""
    model, layer = converted_layer()
    names = [name for name, m in model.named_modules(remove_duplicate=False) if m is layer.dropout]
    assert names == ["0.dropout"]


def test_an_identity_swapped_in_for_the_dropout_leaves_no_old_dropout_in_the_model():
    """The usual way to switch a dropout off: after it, the model's nn.Dropouts are the attention and residual ones,
    and the block's rate reads 0."""
    model, layer = converted_layer()
    layer.dropout = nn.Identity()
    assert [name for name, m in model.named_modules() if isinstance(m, nn.Dropout)] == ["0.dropout1", "0.dropout2"]
    assert layer.ard_ffn.p == 0.0
