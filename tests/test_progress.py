"""rubik.progress: a bar on a terminal, a few plain lines elsewhere, nothing when disabled."""

from __future__ import annotations

import io

from rubik.progress import Progress, track


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_off_a_terminal_at_each_quarter_and_the_end():
    out = io.StringIO()
    with Progress(8, "calibrating", unit="batch", stream=out) as bar:
        for i in range(8):
            bar.set_postfix(loss=f"{1 / (i + 1):.2f}")
            bar.update()
    lines = out.getvalue().splitlines()
    assert [line.split(" after ")[0] for line in lines] == [
        "calibrating: at 2/8 batch (25 %)", "calibrating: at 4/8 batch (50 %)", "calibrating: at 6/8 batch (75 %)",
        "calibrating: done 8/8 batch (100 %)"]
    assert lines[-1].endswith("loss 0.12") and "\r" not in out.getvalue()


def test_a_bar_on_a_terminal_and_nothing_when_disabled():
    term = Terminal()
    assert list(track(range(5), "export", stream=term, leave=True)) == list(range(5))
    assert "\r" in term.getvalue() and "5/5" in term.getvalue()  # tqdm redrew its bar in place
    quiet = io.StringIO()
    with Progress(3, "x", stream=quiet, enabled=False) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def test_resumed_work_counts_from_where_it_was():
    out = io.StringIO()
    with Progress(10, "epoch 2/3", initial=6, stream=out) as bar:
        for _ in range(4):
            bar.update()
    assert out.getvalue().splitlines()[0].startswith("epoch 2/3: at 8/10 it (80 %)")
    assert out.getvalue().splitlines()[-1].startswith("epoch 2/3: done 10/10")
