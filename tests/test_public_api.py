"""``ailf.__all__`` is the public API: everything in it exists, and nothing public is missing."""

from __future__ import annotations

import types

import ailf


def test_all_names_exist() -> None:
    missing = [name for name in ailf.__all__ if not hasattr(ailf, name)]
    assert missing == []


def test_every_public_attribute_is_in_all() -> None:
    public = {
        name
        for name, value in vars(ailf).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - set(ailf.__all__) == set()


def test_all_is_sorted_and_unique() -> None:
    names = [name for name in ailf.__all__ if name != "__version__"]
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))
    assert len(set(ailf.__all__)) == len(ailf.__all__)


def test_exceptions_share_one_root() -> None:
    for name in ailf.__all__:
        value = getattr(ailf, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, ailf.AilfError), name
