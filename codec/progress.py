"""Progress bars for long codec calls: a tqdm bar, or a no-op stand-in when disabled."""
from __future__ import annotations

from tqdm.auto import tqdm


class NoBar:
    """The part of tqdm's interface the codec uses, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool | None):
    """A tqdm bar of ``total`` steps (``enabled=None``: shown only on a terminal; False: a :class:`NoBar`)."""
    if enabled is False:
        return NoBar()
    return tqdm(total=total, desc=desc, disable=None if enabled is None else False, leave=False)


__all__ = ["NoBar", "progress_bar"]
