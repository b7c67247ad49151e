"""ChannelRouter: which listeners hear a channel, and when a channel is wanted."""

from __future__ import annotations

from ailf.messaging._router import ChannelRouter


def test_first_listener_makes_a_channel_wanted_and_the_last_unwanted() -> None:
    router = ChannelRouter[str]()
    assert router.add("news", "a") is True
    assert router.add("news", "b") is False
    assert router.add("news", "a") is False  # twice: nothing changes
    assert "news" in router and list(router) == ["news"] and len(router) == 1
    assert router.remove("news", "a") is False  # "b" still listens
    assert router.remove("news", "a") is False  # not there: nothing changes
    assert router.remove("news", "b") is True
    assert "news" not in router and len(router) == 0
    assert router.remove("nobody", "a") is False


def test_dispatch_is_a_snapshot_in_the_order_listeners_came() -> None:
    router = ChannelRouter[str]()
    for listener in ("c", "a", "b"):
        router.add("news", listener)
    heard = router.dispatch("news")
    assert heard == ("c", "a", "b")
    router.remove("news", "a")  # while "dispatching": the snapshot stands
    assert heard == ("c", "a", "b") and router.dispatch("news") == ("c", "b")
    assert router.dispatch("quiet") == ()


def test_channels_are_independent() -> None:
    router = ChannelRouter[object]()
    listener = object()
    assert router.add("a", listener) and router.add("b", listener)
    assert router.remove("a", listener) is True
    assert router.dispatch("b") == (listener,)
    assert repr(router) == "<ChannelRouter 1 channel(s)>"
