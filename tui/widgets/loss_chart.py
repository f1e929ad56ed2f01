"""Training and validation loss curves (plotext, drawn in braille for resolution).

What is drawn (window, smoothing, y range, ticks) is decided by `tui.chart_view`; this
widget only hands those choices to plotext. The smoothed training curve is drawn over
the raw one (dimmed), and the validation points last, in another colour, so the
train/valid gap stays visible.
"""

from __future__ import annotations

from dataclasses import replace

from textual_plotext import PlotextPlot

from .. import chart_view as cv


class LossChart(PlotextPlot):
    """Loss against step: the training loss as reported, validation loss at each evaluation."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.train: cv.Points = []
        self.valid: cv.Points = []
        self.total_steps = 0
        self.options = cv.ChartOptions()
        self.y_limits: tuple[float, float] | None = None  # in losses, as last drawn
        self.x_limits: tuple[int, int] = (0, 0)

    def on_mount(self) -> None:
        super().on_mount()
        self.replot()

    def on_resize(self) -> None:
        self.replot()  # tick counts follow the size

    def show(self, train: cv.Points, valid: cv.Points, total_steps: int) -> None:
        self.train, self.valid, self.total_steps = list(train), list(valid), total_steps
        self.replot()

    def toggle_log_y(self) -> None:
        self.options = replace(self.options, log_y=not self.options.log_y)
        self.replot()

    def cycle_smoothing(self) -> None:
        self.options = replace(self.options, smoothing=cv.next_in(cv.SMOOTHING, self.options.smoothing))
        self.replot()

    def cycle_window(self) -> None:
        self.options = replace(self.options, window=cv.next_in(cv.WINDOWS, self.options.window))
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        if not self.train and not self.valid:
            plt.title("loss: waiting for the first report")
            self.refresh()
            return
        opts = self.options
        last_step = max(s for s, _ in self.train + self.valid)
        start = cv.window_start(last_step, opts.window)
        raw = cv.visible(self.train, start)
        smoothed = cv.visible(cv.smooth(self.train, opts.smoothing), start)
        valid = cv.visible(self.valid, start)
        last = self.train[-1][1] if self.train else self.valid[-1][1]
        # No plotext legend: it covers the top-left corner, where the early curve is.
        title = f"train {last:.4f}"
        if self.valid:
            title += f"  ● valid {self.valid[-1][1]:.4f}"
        if self.size.width >= 60:  # plotext drops a title wider than the plot
            title += f"  ({cv.describe(opts)})"
        plt.title(title)
        y = lambda v: cv.to_axis(v, opts.log_y)  # noqa: E731
        if opts.smoothing and raw:
            plt.plot([s for s, _ in raw], [y(v) for _, v in raw], marker="braille", color="gray")
        if smoothed:
            plt.plot([s for s, _ in smoothed], [y(v) for _, v in smoothed], marker="braille", color="cyan")
        if valid:
            plt.scatter([s for s, _ in valid], [y(v) for _, v in valid], marker="●", color="orange")
        # The y range follows what is drawn: the smoothed curve (the raw one is context) and valid.
        fitted = cv.y_range([v for _, v in (smoothed if opts.smoothing else raw) + valid], opts.log_y)
        self.y_limits = fitted
        if fitted is not None:
            low, high = fitted
            plt.ylim(y(low), y(high))
            rows = max(self.size.height - 4, 2)
            positions, labels = cv.y_ticks(low, high, opts.log_y, count=min(4, max(rows // 3, 2)))
            plt.yticks(positions, labels)
        # zoom on what has run (the progress bar shows the whole horizon)
        right = max(last_step, min(self.total_steps, 10))
        plt.xlim(start, right)
        self.x_limits = (start, right)
        ticks = cv.step_ticks(start, right, count=max(2, min(6, self.size.width // 10)))
        plt.xticks(ticks, [str(t) for t in ticks])
        plt.xlabel("step")
        self.refresh()
