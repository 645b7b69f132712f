"""more3s.host: the machine record a run keeps beside its numbers."""

import torch

from more3s.host import cpu_model, machine


def test_machine_names_the_cpu_and_the_threads_at_the_call():
    before = torch.get_num_threads()
    try:
        other = 2 if before == 1 else 1
        torch.set_num_threads(other)
        one = machine()
        assert one["threads"] == other and one["cpu"] == cpu_model() and cpu_model().strip()
        assert one["torch"] == torch.__version__ and one["cpus"] >= 1 and isinstance(one["gpus"], list)
    finally:
        torch.set_num_threads(before)
