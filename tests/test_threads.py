"""A time-budgeted CPU run trains at the faster of torch's thread count and one thread, timed every
PROBE_EVERY steps (training/threads.py); a step budget, a count the user fixed, and torchrun keep theirs."""
import torch

from undiffuse.training import TrainConfig, Trainer
from undiffuse.training.learner import Learner
from undiffuse.training.threads import DRIFT_WINDOW, PROBE, PROBE_EVERY, ThreadChooser, tunable


def drive(chooser: ThreadChooser, steps: range, cost) -> list[int]:
    """The count each step ran at, each step taking cost(count) seconds."""
    counts = []
    for step in steps:
        chooser.start(step)
        counts.append(chooser._current)
        chooser.took(cost(chooser._current))
    return counts


def test_one_thread_wins_when_it_is_faster_and_the_choice_is_timed_again():
    calls = []
    chooser = ThreadChooser(set_threads=calls.append, full=2)
    counts = drive(chooser, range(PROBE_EVERY + 2 * PROBE + 10), lambda n: 0.7 if n == 2 else 0.3)
    assert counts[:PROBE] == [2] * PROBE and counts[PROBE:2 * PROBE] == [1] * PROBE
    assert set(counts[2 * PROBE:PROBE_EVERY]) == {1}  # the busy machine: one thread from then on
    assert counts[PROBE_EVERY:PROBE_EVERY + PROBE] == [2] * PROBE  # timed again, both counts
    assert chooser.chosen == 1 and calls[:2] == [1, 2] and calls[-1] == 1
    chooser.close()
    assert calls[-1] == 2  # torch as the run found it


def test_the_full_count_stays_when_it_is_faster_or_as_fast():
    for one_thread in (0.5, 0.3):  # slower than two threads, then as fast
        chooser = ThreadChooser(set_threads=lambda n: None, full=2)
        counts = drive(chooser, range(3 * PROBE), lambda n: 0.3 if n == 2 else one_thread)
        assert counts[2 * PROBE:] == [2] * PROBE and chooser.chosen == 2


def test_a_resumed_run_decides_at_its_next_whole_probe():
    chooser = ThreadChooser(set_threads=lambda n: None, full=2)
    first = PROBE_EVERY + 3  # resumed in the middle of a probe: no choice from a part of one
    counts = drive(chooser, range(first, 2 * PROBE_EVERY + 2 * PROBE + 1), lambda n: 0.7 if n == 2 else 0.3)
    assert set(counts[2 * PROBE - 3:PROBE_EVERY - 3]) == {2}
    assert chooser.chosen == 1 and counts[-1] == 1


def test_load_that_comes_and_goes_between_probes_is_met_within_a_few_steps():
    """Quiet cores: two threads 0.15 s a step, one 0.21 s; a busy neighbour from step 100 to 250: two
    threads 0.7 s, one 0.29 s (the figures of benchmarks/thread_waiting.py); no periodic probe falls
    in between."""
    def cost(step: int, count: int) -> float:
        busy = 100 <= step < 250
        return (0.7 if busy else 0.15) if count == 2 else (0.29 if busy else 0.21)

    chooser = ThreadChooser(set_threads=lambda n: None, full=2)
    counts = []
    for step in range(350):
        chooser.start(step)
        counts.append(chooser._current)
        chooser.took(cost(step, chooser._current))
    react = DRIFT_WINDOW + 2 * PROBE  # steps to see the change, then to time both counts
    assert set(counts[2 * PROBE:100]) == {2}
    assert set(counts[100 + react:250]) == {1}  # met within `react` steps, not at step 400
    assert set(counts[250 + react:]) == {2}  # and the neighbour's leaving too
    assert counts[100:100 + react].count(2) <= DRIFT_WINDOW + PROBE


def test_steady_steps_start_no_probe_between_the_periodic_ones():
    chooser = ThreadChooser(set_threads=lambda n: None, full=2)
    counts = drive(chooser, range(PROBE_EVERY), lambda n: 0.15 if n == 2 else 0.21)
    assert counts[:2 * PROBE].count(1) == PROBE and counts[2 * PROBE:] == [2] * (PROBE_EVERY - 2 * PROBE)


def test_disabled_it_never_touches_the_count():
    calls = []
    chooser = ThreadChooser(False, set_threads=calls.append, full=2)
    drive(chooser, range(3 * PROBE), lambda n: 0.7 if n == 2 else 0.3)
    chooser.close()
    assert calls == []


def test_only_a_time_budget_on_a_cpu_with_threads_to_spare_tunes(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert tunable(cpu, distributed=False, time_budget=True)
    assert not tunable(cpu, distributed=False, time_budget=False)  # a step budget stays repeatable bit for bit
    assert not tunable(cpu, distributed=True, time_budget=True)
    assert not tunable(torch.device("cuda"), distributed=False, time_budget=True)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert not tunable(cpu, distributed=False, time_budget=True)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's count
    assert not tunable(cpu, distributed=False, time_budget=True)


def test_a_time_budgeted_run_on_a_busy_machine_trains_at_one_thread(tmp_path, monkeypatch):
    """A real run on a fake clock where a step at two threads costs 0.7 s and at one 0.3 s (the busy
    machine of benchmarks/thread_waiting.py): it runs most steps at one thread, and ends as it began."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    full = max(2, before)
    torch.set_num_threads(full)
    now, seen = [0.0], []
    real = Learner.backward

    def backward(self, *args):
        seen.append(torch.get_num_threads())
        now[0] += 0.7 if torch.get_num_threads() > 1 else 0.3
        return real(self, *args)

    monkeypatch.setattr(Learner, "backward", backward)
    try:
        cfg = TrainConfig.flat(data="digits", image_size=8, minutes=1, model="tiny", batch_size=4, grids=0,
                               checkpoint_minutes=10)
        trainer = Trainer.create(cfg, tmp_path / "r", clock=lambda: now[0])
        trainer.train(progress=False)
        assert torch.get_num_threads() == full
    finally:
        torch.set_num_threads(before)
    taken = seen[-trainer.step:]  # the steps (Trainer.create timed the model on its own first)
    assert trainer.threads.chosen == 1 and taken.count(1) > 0.9 * len(taken)
    assert trainer.step > 1.5 * 60 / 0.7  # far more steps than two threads fit in the minute
