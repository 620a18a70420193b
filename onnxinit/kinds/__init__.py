"""Rule kinds: each is ``propagate(node, rule, ctx)``, implemented once for every op it serves.

A kind reads its inputs' statistics from ``ctx`` and records its outputs'
with ``ctx.set``. The rule table (rules/ops.toml) maps op types to kinds.
"""
from .einsum import einsum
from .elementwise import elementwise
from .normalize import batchnorm, fixed, group_norm
from .pooling import pool, reduce_norm, reduce_positions
from .recurrent import recurrent
from .softmax import softmax
from .structural import broadcast, concat, dropout, identity, pad, reshape, slice_positions, split
from .transformer import gather, layernorm
from .weighted import weighted

KINDS = {
    "weighted": weighted,
    "elementwise": elementwise,
    "batchnorm": batchnorm,
    "dropout": dropout,
    "pool": pool,
    "reshape": reshape,
    "identity": identity,
    "concat": concat,
    "pad": pad,
    "fixed": fixed,
    "gather": gather,
    "layernorm": layernorm,
    "split": split,
    "slice": slice_positions,
    "reduce": reduce_positions,
    "norm": reduce_norm,
    "softmax": softmax,
    "group_norm": group_norm,
    "broadcast": broadcast,
    "einsum": einsum,
    "recurrent": recurrent,
}
