"""Progress reporting from library code, without the library knowing about terminals.

Long-running functions take a `Reporter`; the CLI passes one that draws rich progress bars,
tests and API users get the silent default.
"""

from __future__ import annotations


class Reporter:
    """Silent reporter; subclass to show progress."""

    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1, **fields) -> None:
        pass

    def stop(self) -> None:
        pass

    def log(self, message: str) -> None:
        pass


class RichReporter(Reporter):
    """Draws a rich progress bar on stderr (nothing when stderr is not a terminal).

    `unit="bytes"` counts bytes: the bar shows size, transfer speed and time left (downloads).
    """

    def __init__(self, console=None, unit: str = "items"):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.unit = unit
        self._progress = None
        self._task = None

    def start(self, description: str, total: int | None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.stop()
        if self.unit == "bytes":
            from rich.progress import DownloadColumn, TransferSpeedColumn

            columns = (DownloadColumn(), TransferSpeedColumn(), TextColumn("{task.fields[info]}"))
        else:
            columns = (MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), *columns, TimeRemainingColumn(),
            console=self.console, transient=False, disable=not self.console.is_terminal,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, info="")

    def advance(self, n: int = 1, **fields) -> None:
        if self._progress is not None:
            info = "  ".join(f"{k} {v}" for k, v in fields.items())
            self._progress.update(self._task, advance=n, info=info)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def log(self, message: str) -> None:
        self.console.print(message)
