"""Checkpoint keys that survive ``convert``: a module whose children ``convert`` moved (a chain collapsed
into one block, a block that holds Linears its layer still holds) saves its state_dict under the keys it
had before, and loads a checkpoint written with those keys; so a checkpoint of the unconverted model
loads into the converted one, and the reverse, with ``strict=True``; a partial load reports its missing and
unexpected keys by the checkpoint's names, as the unconverted model would.

Such a module carries a ``KeyMap``: prefixes of its keys as they now are (``raw``) against the keys of
the checkpoint (``saved``). An ``alias`` entry names a tensor the module also holds under another, live
key (the same Parameter reached twice): it is left out on save and filled from that key on load.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from torch import nn

ATTR = "_approxdrop_key_map"  # where a module keeps its KeyMap
LOAD_MARKS = "_approxdrop_load_marks"  # (prefix, len(missing_keys), len(unexpected_keys)) as its load began

Entry = tuple[str, str, bool]  # (raw prefix, saved prefix, alias); prefixes relative to the module, ending in "."


@dataclass
class KeyMap:
    """The entries of one module; the longest matching prefix wins. ``implied``: entries a later ``convert`` adds
    for a module it moves whose own keys an earlier one's entries already map (a block made by the first, renumbered
    by the second): its prefix keeps the checkpoint's name only for keys no entry maps, so where a checkpoint prefix
    is both an entry's and an implied one's (the first block's Linear saved as ``3.``, the renumbered block once
    ``3.``), the entry's wins on load."""

    entries: list[Entry] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # the checkpoint's keys in the order they were saved
    implied: list[Entry] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)  # raw prefixes that named a module when convert left the map
    empty: list[str] = field(default_factory=list)  # raw prefixes of moved parts with nothing saved: never loaded into

    def check(self, module: nn.Module) -> None:
        """RuntimeError unless every raw prefix that named a module still does: children removed or moved since
        (``insert`` into a converted Sequential) would make the map read or write other tensors. A module put in
        one's place (peft's LoRA wrapper) is fine: its keys are still under the prefix."""
        for raw in self.modules:
            try:
                module.get_submodule(raw[:-1])
            except AttributeError:
                raise RuntimeError(
                    f"{type(module).__name__}: its children changed after convert ({raw[:-1]!r} no longer names a "
                    "module), so the checkpoint key map convert left on it no longer applies. Change the model's "
                    "structure before convert"
                ) from None

    def _hit(self, rel: str) -> tuple[Entry, bool] | None:
        """The entry whose raw prefix is the longest of ``rel``'s (an entry before an implied one), and whether it
        is implied; None when none matches."""
        hits = [(e, False) for e in self.entries if rel.startswith(e[0])]
        hits += [(e, True) for e in self.implied if rel.startswith(e[0])]
        return max(hits, key=lambda hit: len(hit[0][0])) if hits else None

    def to_saved(self, rel: str) -> str | None:
        """The checkpoint key of raw key ``rel`` (None for an alias: not saved)."""
        hit = self._hit(rel)
        if hit is None:
            return rel
        (raw, saved, alias), _ = hit
        return None if alias else saved + rel[len(raw) :]

    def to_raw(self, rel: str) -> list[str]:
        """The raw keys checkpoint key ``rel`` fills: its new key (or itself, if it did not move and its
        place was not taken) and its aliases; empty when it has no place here."""
        renames = [(e, False) for e in self.entries if not e[2] and rel.startswith(e[1]) and e[0] not in self.empty]
        renames += [(e, True) for e in self.implied if not e[2] and rel.startswith(e[1]) and e[0] not in self.empty]
        if renames:  # the longest checkpoint prefix; on a tie, an entry before an implied one
            (raw, saved, _), _ = max(renames, key=lambda hit: (len(hit[0][1]), not hit[1]))
            out = [raw + rel[len(saved) :]]
        else:
            out = [rel]
        out = [key for key in out if self.to_saved(key) == rel]
        everything = self.entries + self.implied
        aliases = [raw + rel[len(saved) :] for raw, saved, alias in everything if alias and rel.startswith(saved)]
        return out + [key for key in aliases if self.to_saved(key) is None]


def add_entries(module: nn.Module, moved: list[Entry], order: list[str]) -> None:
    """Record that ``module``'s children moved as ``moved`` says (raw prefixes after this conversion
    against the raw prefixes before it), composed with what an earlier ``convert`` left on it, and
    ``order``, its state_dict keys before the move; install the hooks that apply the map, once."""
    old = getattr(module, ATTR, None)
    if old is None:
        module.register_state_dict_post_hook(_save_hook)
        module.register_load_state_dict_pre_hook(_load_hook)
        module.register_load_state_dict_post_hook(_load_post_hook)
        old = KeyMap()
    entries: list[Entry] = []
    implied: list[Entry] = []
    for raw, before, alias in moved:
        for new, earlier in ((entries, old.entries), (implied, old.implied)):  # the moved module's inner entries
            new += [(raw + r[len(before) :], s, a or alias) for r, s, a in earlier if r.startswith(before)]
        saved, hit = old.to_saved(before), old._hit(before)
        inner = any(r.startswith(before) and r != before for r, _, _ in old.entries + old.implied)
        kind = implied if (hit is None and inner) or (hit is not None and hit[1]) else entries
        kind.append((raw, before if saved is None else saved, alias or saved is None))
    untouched = [e for e in old.entries if not any(e[0].startswith(before) for _, before, _ in moved)]
    implied += [e for e in old.implied if not any(e[0].startswith(before) for _, before, _ in moved)]
    entries += untouched
    modules = []
    for raw in dict.fromkeys(raw for raw, _, _ in entries + implied):
        try:
            module.get_submodule(raw[:-1])
            modules.append(raw)
        except AttributeError:
            pass  # a prefix that names no module (a tensor's own key): nothing to check
    # moved parts that save nothing (an activation, a dropout): their checkpoint names are free for what comes later
    empty = [raw for raw, saved, _ in entries + implied if not any(key.startswith(saved) for key in order)]
    object.__setattr__(module, ATTR, KeyMap(entries, order, implied, modules, empty))


def _save_hook(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """Rename this module's keys to the checkpoint's, in the checkpoint's order, leaving aliases out."""
    keys: KeyMap = getattr(module, ATTR)
    keys.check(module)
    items = list(state_dict.items())
    state_dict.clear()
    mine = []  # (checkpoint key relative to the module, value)
    for key, value in items:
        if not key.startswith(prefix):
            state_dict[key] = value
            continue
        saved = keys.to_saved(key[len(prefix) :])
        if saved is not None:
            mine.append((saved, value))
    clashes = sorted(saved for saved, count in Counter(saved for saved, _ in mine).items() if count > 1)
    if clashes:  # a module added since convert, at a key a moved one is saved under: one would overwrite the other
        raise RuntimeError(
            f"{type(module).__name__}: two of its tensors would be saved as {prefix}{clashes[0]}: a module added after "
            "convert takes a key the converted parts keep for the checkpoint. Change the model's structure before "
            "convert"
        )
    rank = {key: i for i, key in enumerate(keys.order)}
    for saved, value in sorted(mine, key=lambda item: rank.get(item[0], len(rank))):  # stable: new keys last
        state_dict[prefix + saved] = value


def _load_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Rename the checkpoint's keys to this module's before its children read them; a key whose place
    is taken by a moved child is unexpected."""
    keys: KeyMap = getattr(module, ATTR)
    keys.check(module)
    items = list(state_dict.items())
    state_dict.clear()
    for key, value in items:
        if not key.startswith(prefix):
            state_dict[key] = value
            continue
        raws = keys.to_raw(key[len(prefix) :])
        if not raws:
            unexpected_keys.append(key)
        for raw in raws:
            state_dict[prefix + raw] = value
    object.__setattr__(module, LOAD_MARKS, (prefix, len(missing_keys), len(unexpected_keys)))


def _load_post_hook(module: nn.Module, incompatible) -> None:
    """Name the missing and unexpected keys that this module and its children found (raw keys) as the
    checkpoint does, leaving aliases out: load_state_dict reports the keys state_dict() shows."""
    keys: KeyMap = getattr(module, ATTR)
    prefix, *starts = getattr(module, LOAD_MARKS)
    for found, start in zip((incompatible.missing_keys, incompatible.unexpected_keys), starts):
        renamed: list[str] = []
        for key in found[start:]:
            if key.startswith(prefix):
                saved = keys.to_saved(key[len(prefix) :])
                key = None if saved is None else prefix + saved
            if key is not None and key not in renamed:
                renamed.append(key)
        found[start:] = renamed


def saved_key(root: nn.Module, key: str) -> str | None:
    """The checkpoint key of ``root``'s state key ``key`` as it is now (a converted T5 block's
    ``DenseReluDense.0.weight`` is ``DenseReluDense.wi.weight``): the key maps of the modules on its path applied
    from the deepest up, as ``state_dict``'s hooks apply them; None for an alias, which is not saved."""
    owners, prefix, module = [("", root)], "", root
    for name in key.split(".")[:-1]:  # down to the module that holds the tensor, one child at a time
        prefix, module = f"{prefix}{name}.", module.get_submodule(name)
        owners.append((prefix, module))
    for prefix, module in reversed(owners):
        keys: KeyMap | None = getattr(module, ATTR, None)
        if keys is not None:
            saved = keys.to_saved(key[len(prefix) :])
            if saved is None:
                return None
            key = prefix + saved
    return key
