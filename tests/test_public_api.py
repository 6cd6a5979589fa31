"""The public surface: ``__all__`` matches the exports and everything is documented."""

import inspect
import types

import optaxsched
from optaxsched import schedules


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


def test_schedules_all_matches_exports():
    exported = set(schedules.__all__)
    for name in exported:
        assert callable(getattr(schedules, name)), name
    defined = {
        n for n, o in vars(schedules).items()
        if inspect.isfunction(o) and o.__module__ == schedules.__name__ and not n.startswith("_")
    }
    assert defined == exported, defined ^ exported


def test_every_public_name_has_a_docstring():
    assert optaxsched.__doc__
    for module in (optaxsched, schedules):
        for name in module.__all__:
            obj = getattr(module, name)
            doc = inspect.getdoc(obj)
            assert doc and len(doc.strip()) > 20, f"{module.__name__}.{name} lacks a docstring"
