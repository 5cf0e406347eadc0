"""Models with dropout sites: the table of dropout methods, the MLP, the LSTM language models, the
decoder-only transformer."""

from .convert import convert
from .ffn import ApproxDropoutFFN
from .gated import GatedApproxDropoutFFN, PackedGatedApproxDropoutFFN
from .lstm import LM_METHODS, LSTM_METHODS, ApproxDropoutLSTM, TorchLSTM, language_model
from .methods import DROPOUT_METHODS, Method, get_method, lstm_gemm_work, methods_for, mlp_gemm_work
from .mlp import METHODS, ApproxDropoutMLP
from .peft_names import lora_targets
from .transformer import DecoderLM

__all__ = [
    "DROPOUT_METHODS",
    "LM_METHODS",
    "LSTM_METHODS",
    "METHODS",
    "ApproxDropoutFFN",
    "ApproxDropoutLSTM",
    "ApproxDropoutMLP",
    "DecoderLM",
    "GatedApproxDropoutFFN",
    "Method",
    "PackedGatedApproxDropoutFFN",
    "TorchLSTM",
    "convert",
    "get_method",
    "language_model",
    "lora_targets",
    "lstm_gemm_work",
    "methods_for",
    "mlp_gemm_work",
]
