"""The public surface: one import path per public name, all of it documented."""

import importlib
import importlib.metadata
import inspect
import pkgutil
import sys
import types

import jax.numpy as jnp
import optax

import optaxsched
import optaxsched.flax
from optaxsched import schedules

# The only public submodules; every other module of the package is private.
PUBLIC_SUBMODULES = {"schedules", "flax"}


def _public_module_names(module: types.ModuleType) -> set[str]:
    return {
        name for name, obj in vars(module).items()
        if not name.startswith("_")
        and not isinstance(obj, types.ModuleType)
        and getattr(obj, "__module__", "").startswith("optaxsched")
    }


def test_all_matches_exports():
    exported = set(optaxsched.__all__)
    assert len(exported) == len(optaxsched.__all__), "duplicates in __all__"
    for name in exported:
        assert hasattr(optaxsched, name), f"__all__ names missing {name}"
    defined_here = _public_module_names(optaxsched)
    assert defined_here <= exported, f"exported but not in __all__: {defined_here - exported}"


# The private modules whose public-looking names are the factories of
# ``optaxsched.schedules`` (its helpers live in ``_arith``).
SCHEDULE_MODULES = ("_decay", "_cyclic", "_compose")


def test_schedules_all_matches_exports():
    factories = set()
    for short in SCHEDULE_MODULES:
        module = importlib.import_module(f"optaxsched.schedules.{short}")
        # By source file: the package re-labels each factory's __module__.
        defined = {n for n, o in vars(module).items()
                   if inspect.isfunction(o) and o.__code__.co_filename == module.__file__
                   and not n.startswith("_")}
        assert defined == set(module.__all__), (short, defined ^ set(module.__all__))
        factories |= defined
    assert factories == set(schedules.__all__), factories ^ set(schedules.__all__)
    for name in schedules.__all__:
        assert callable(getattr(schedules, name)), name


def test_every_public_name_has_a_docstring():
    assert optaxsched.__doc__
    for module in (optaxsched, schedules):
        for name in module.__all__:
            obj = getattr(module, name)
            doc = inspect.getdoc(obj)
            assert doc and len(doc.strip()) > 20, f"{module.__name__}.{name} lacks a docstring"


def _walk_modules(package: types.ModuleType):
    for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
        yield info.name


def test_only_schedules_and_flax_are_public_submodules():
    public = set()
    for name in _walk_modules(optaxsched):
        parts = name.split(".")[1:]
        if not any(p.startswith("_") for p in parts):
            public.add(".".join(parts))
    assert public == PUBLIC_SUBMODULES, (
        f"public submodules must be exactly {sorted(PUBLIC_SUBMODULES)}; found {sorted(public)}: "
        "name implementation modules with a leading underscore")


def _public_objects(module: types.ModuleType) -> dict[str, object]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return {n: getattr(module, n) for n in names
            if not isinstance(getattr(module, n), types.ModuleType)}


def test_no_public_name_is_reachable_two_ways():
    # Every object the library defines appears under one public path only:
    # optaxsched.NAME, optaxsched.schedules.NAME or optaxsched.flax.NAME.
    seen: dict[int, str] = {}
    for module in (optaxsched, schedules, optaxsched.flax):
        for name, obj in _public_objects(module).items():
            if not getattr(obj, "__module__", "").startswith("optaxsched"):
                continue
            where = f"{module.__name__}.{name}"
            assert id(obj) not in seen, f"{where} is also {seen[id(obj)]}"
            seen[id(obj)] = where
    # Public modules expose nothing of the library beyond their __all__.
    for module in (optaxsched, schedules, optaxsched.flax):
        extra = {
            n for n, o in vars(module).items()
            if not n.startswith("_") and n not in module.__all__
            and not isinstance(o, types.ModuleType)
            and getattr(o, "__module__", "").startswith("optaxsched")
        }
        assert not extra, f"{module.__name__} exposes {sorted(extra)} outside __all__"
    # No public module holds a library module under a public name (that
    # would be a second path to everything in it).
    for module in (optaxsched, schedules, optaxsched.flax):
        for n, o in vars(module).items():
            if (isinstance(o, types.ModuleType) and not n.startswith("_")
                    and o.__name__.startswith("optaxsched")):
                assert module is optaxsched and n in PUBLIC_SUBMODULES, (
                    f"{module.__name__}.{n} exposes the module {o.__name__}")
    assert not hasattr(optaxsched, "__getattr__"), "no lazy module attributes"


def test_no_former_module_path_is_importable():
    import optaxsched.schedules  # noqa: F401  (both public submodules loaded)

    public = {f"optaxsched.{m}" for m in PUBLIC_SUBMODULES}
    for name in list(sys.modules):
        if name.startswith("optaxsched."):
            parts = name.split(".")[1:]
            assert name in public or any(p.startswith("_") for p in parts), (
                f"{name} is importable: implementation modules must be private")
    for former in ("clipping", "guard", "loss_adaptive", "groups", "telemetry"):
        assert f"optaxsched.{former}" not in sys.modules
        try:
            importlib.import_module(f"optaxsched.{former}")
        except ModuleNotFoundError:
            continue
        raise AssertionError(f"optaxsched.{former} is importable")


# Private modules that implement public names: everything in their __all__ is
# exported by the package (a new factory cannot be left out).
IMPLEMENTATION_MODULES = ("_clipping", "_adaptive_clipping", "_guard", "_loss_adaptive",
                          "_groups", "_telemetry", "_lr_find", "_lr_find_result")


def test_implementation_modules_export_everything_they_list():
    for short in IMPLEMENTATION_MODULES:
        module = importlib.import_module(f"optaxsched.{short}")
        missing = set(module.__all__) - set(optaxsched.__all__)
        assert not missing, f"{short} lists {sorted(missing)}, which optaxsched does not export"


def test_private_modules_import_cleanly():
    # A private module that fails to import would only surface where it is used.
    for name in _walk_modules(optaxsched):
        if name != "optaxsched.flax":
            importlib.import_module(name)


def test_version_comes_from_the_package_metadata():
    assert optaxsched.__version__ == importlib.metadata.version("optaxsched")


# State field names are the checkpoint format (CHANGELOG.md records every
# change). The rule: each field of a state starts with its transform's prefix,
# so no two states share a field name and ``optax.tree.get(state, name)``
# finds one value in any chain. Only ``inner_state``, optax's own name for the
# state a wrapper holds, is exempt. A new state must be listed here.
STATE_PREFIXES = {
    "ClipByGlobalNormState": "gclip_",
    "ScaleByGradNormState": "normalize_",
    "ScaleByGradNormRmsState": "rms_",
    "ClipByZscoreState": "zclip_",
    "ClipByPercentileState": "autoclip_",
    "ClipByEmaRatioState": "adagc_",
    "ExplosionGuardState": "guard_",
    "RecoveryState": "recovery_",
    "ReduceOnPlateauState": "plateau_",
    "ScaleByLossState": "loss_",
    "BoldDriverState": "bold_",
    "MetricPlateauState": "metric_plateau_",
    "ScaleByGroupState": "group_",
}
WRAPPER_FIELDS = {"inner_state"}


def _is_state(obj) -> bool:
    return (isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")
            and obj.__module__.startswith("optaxsched"))


def _states_in(tree, found: dict[str, type]) -> None:
    # Every library NamedTuple inside an optimizer state, at any depth.
    if _is_state(type(tree)):
        found[type(tree).__name__] = type(tree)
    if isinstance(tree, (tuple, list)):
        for x in tree:
            _states_in(x, found)
    elif isinstance(tree, dict):
        for x in tree.values():
            _states_in(x, found)


def _library_states() -> dict[str, type]:
    # By name (every *State class) and by use (whatever NamedTuple the
    # registry's transforms put into a state, whatever its name).
    from conformance_cases import CASES, make_tree

    states: dict[str, type] = {}
    params = make_tree(0)
    for case in CASES:
        _states_in(case.make().init(params), states)
    plateau = optaxsched.MetricPlateau()
    _states_in(plateau.init(params), states)
    for name in _walk_modules(optaxsched):
        if name == "optaxsched.flax":
            continue
        for obj in vars(importlib.import_module(name)).values():
            if _is_state(obj) and obj.__name__.endswith("State"):
                states[obj.__name__] = obj
    return states


def test_state_fields_follow_the_prefix_rule_and_are_unique():
    states = _library_states()
    assert set(states) == set(STATE_PREFIXES), (
        f"states without a prefix entry: {sorted(set(states) - set(STATE_PREFIXES))}; "
        f"entries without a state: {sorted(set(STATE_PREFIXES) - set(states))}")
    prefixes = list(STATE_PREFIXES.values())
    for a in prefixes:
        for b in prefixes:
            assert a == b or not b.startswith(a), f"prefix {a!r} is a prefix of {b!r}"
    seen: dict[str, str] = {}
    for name, cls in states.items():
        for field in cls._fields:
            if field in WRAPPER_FIELDS:
                continue
            assert field.startswith(STATE_PREFIXES[name]), (
                f"{name}.{field} does not start with {STATE_PREFIXES[name]!r}")
            assert field not in seen, f"{name}.{field} is also a field of {seen[field]}"
            seen[field] = name


def test_former_field_names_still_read_as_attributes():
    guard = optaxsched.explosion_guard(optax.sgd(0.1))
    state = guard.init({"w": jnp.ones(2)})
    assert state.skipped_steps is state.guard_skipped_steps
    assert state.diverged is state.guard_diverged
    assert state.last_grad_norm is state.guard_grad_norm
    assert state.recovery is state.guard_recovery
    assert "skipped_steps" not in type(state)._fields
    clip = optaxsched.clip_by_global_norm(1.0).init({"w": jnp.ones(2)})
    assert clip.grad_norm is clip.gclip_grad_norm and clip.clip_count is clip.gclip_clip_count
