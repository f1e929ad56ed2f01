"""Training and validation loss curves (plotext, drawn in braille for resolution)."""

from __future__ import annotations

from textual_plotext import PlotextPlot


class LossChart(PlotextPlot):
    """Loss against step: the training loss as reported, validation loss at each evaluation."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.train: list[tuple[int, float]] = []
        self.valid: list[tuple[int, float]] = []
        self.total_steps = 0

    def on_mount(self) -> None:
        super().on_mount()
        self.replot()

    def show(
        self, train: list[tuple[int, float]], valid: list[tuple[int, float]], total_steps: int
    ) -> None:
        self.train, self.valid, self.total_steps = list(train), list(valid), total_steps
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.xlabel("step")
        if not self.train and not self.valid:
            plt.title("loss: waiting for the first report")
        else:
            last = self.train[-1][1] if self.train else self.valid[-1][1]
            plt.title(f"loss {last:.4f}")
        if self.train:
            plt.plot(
                [s for s, _ in self.train],
                [v for _, v in self.train],
                label="train",
                marker="braille",
                color="cyan",
            )
        if self.valid:
            plt.plot(
                [s for s, _ in self.valid],
                [v for _, v in self.valid],
                label="valid",
                marker="dot",
                color="orange",
            )
        last_step = max([s for s, _ in self.train + self.valid], default=0)
        if last_step:
            # zoom on what has run (the progress bar shows the whole horizon)
            plt.xlim(0, max(last_step, min(self.total_steps, 10)))
        self.refresh()
