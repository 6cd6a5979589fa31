"""Parameter paths: the one place where the library turns a tree position into a name.

Used by per-parameter rates (``scale_by_group``, ``label_by_path``), by
``telemetry`` and ``effective_learning_rate`` to name their entries, and by the
tests. ``tree_paths`` is public (``optaxsched.tree_paths``); ``path_str`` is
private.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax

__all__ = ["path_str", "tree_paths"]

# Attribute names under which boxed parameters keep their array: flax.nnx
# Variables (``value``; ``raw_value`` in some versions) and flax.linen
# ``Partitioned`` boxes (``value``). They are dropped from the end of a path so
# a boxed and an unboxed copy of one tree have the same paths.
_BOX_FIELDS = ("value", "raw_value")


def _key_str(key: Any) -> str:
    # DictKey.key, FlattenedIndexKey.key, SequenceKey.idx, GetAttrKey.name;
    # plain str/int entries (nnx flat-state paths) and anything else: str().
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr) and not isinstance(key, (str, int)):
            return str(getattr(key, attr))
    return str(key)


def path_str(keypath: Iterable[Any], *, sep: str = "/") -> str:
    """Turns a JAX key path into a parameter path such as ``layers_0/attn/kernel``.

    ``DictKey`` gives its key, ``SequenceKey`` and ``FlattenedIndexKey`` their
    index, ``GetAttrKey`` (dataclasses, Flax structs, NamedTuples, nnx Modules)
    its field name; plain ``str``/``int`` entries (``nnx`` flat-state paths) are
    used as they are. A trailing ``GetAttrKey`` named ``value`` or ``raw_value``
    is dropped: there an ``nnx.Variable`` or a ``linen.Partitioned`` box keeps
    its array, so ``nnx.state(model, nnx.Param)`` and its ``nnx.as_pure`` /
    ``nnx.to_pure_dict`` copies all give ``linear/kernel``, never
    ``linear/kernel/value`` (paths stay unique: the box is not a leaf). Keys
    containing ``sep`` are not escaped.

    Kept instead of ``jax.tree_util.keystr(keypath, simple=True,
    separator="/")``, which keeps the box's ``value`` entry, so a boxed and an
    unboxed copy of one tree would name their leaves differently.

    Args:
      keypath: a key path from ``jax.tree_util.tree_flatten_with_path``, or any
        sequence of key entries, strings and integers.
      sep: separator between entries.

    Returns:
      The path; ``""`` for the root.

    Example:
      >>> import jax
      >>> tree = {"encoder": {"layers": [{"kernel": 1.0}]}}
      >>> [path_str(k) for k, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
      ['encoder/layers/0/kernel']
    """
    keypath = tuple(keypath)
    if keypath and isinstance(keypath[-1], jax.tree_util.GetAttrKey):
        keypath = keypath[:-1] if keypath[-1].name in _BOX_FIELDS else keypath
    return sep.join(_key_str(k) for k in keypath)


def tree_paths(tree: Any, *, is_leaf: Callable[[Any], bool] | None = None) -> Any:
    """Replaces every leaf of ``tree`` by its path, e.g. ``layers_0/attn/kernel``.

    A path joins with ``/`` the key of each level that leads to the leaf:
    dict keys, sequence indices, and the field names of dataclasses, Flax
    structs, NamedTuples and nnx Modules; plain ``str``/``int`` entries (nnx
    flat-state paths) are used as they are. The ``value`` (or ``raw_value``)
    attribute under which an ``nnx.Variable`` or a ``linen.Partitioned`` box
    keeps its array is dropped, so ``nnx.state(model, nnx.Param)`` and its
    ``nnx.to_pure_dict`` copy name their leaves alike (``linear/kernel``).
    Keys containing ``/`` are not escaped. Per-parameter rules
    (``scale_by_group``, ``label_by_path``) match these paths, and
    ``telemetry`` names its entries the same way.

    The result has the structure of ``tree`` (nnx ``Variable`` boxes included,
    holding strings), so it maps together with the tree, e.g. into a mask for
    ``optax.masked``. Linen: ``layers_0/attn/query/kernel`` (given
    ``variables["params"]``); ``nnx.state(model, nnx.Param)``:
    ``layers/0/linear/kernel``.

    Args:
      tree: any pytree.
      is_leaf: optional, as in ``jax.tree_util.tree_flatten``.

    Returns:
      A tree of ``str`` with the structure of ``tree``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
      >>> tree_paths(params)
      {'dense': {'bias': 'dense/bias', 'kernel': 'dense/kernel'}}
      >>> mask = jax.tree.map(lambda p: not p.endswith("bias"), tree_paths(params))
      >>> tx = optax.masked(optax.add_decayed_weights(1e-4), mask)
    """
    keyed, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return jax.tree_util.tree_unflatten(treedef, [path_str(k) for k, _ in keyed])
