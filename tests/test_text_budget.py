import pytest

from frugalnn.errors import UserError
from frugalnn.methods.text.budget import plan_budget
from frugalnn.methods.text.models import NgramNet


@pytest.mark.parametrize("budget", [16_000, 100_000, 1_000_000])
@pytest.mark.parametrize("bits", [8, 32])
def test_plan_fits_and_reports_exact_bytes(budget: int, bits: int) -> None:
    plan = plan_budget(budget, hashed_groups=4, num_classes=19, bits=bits)
    assert plan.bytes <= budget and plan.bytes > 0.95 * budget
    net = NgramNet(plan.rows, plan.dims, plan.hidden, 19)
    assert net.nbytes(bits) == plan.bytes and net.nbytes(32) == plan.float_bytes
    if bits == 8:
        assert net.quantize_().nbytes() == plan.bytes


def test_bigger_budgets_give_bigger_models() -> None:
    sizes = [plan_budget(b, hashed_groups=4, num_classes=19).rows[0]
             for b in (16_000, 64_000, 256_000)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_too_small_budget_names_the_smallest_model() -> None:
    with pytest.raises(UserError, match=r"fits no model; the smallest .* takes \d+ bytes"):
        plan_budget(1000, hashed_groups=4, num_classes=19)


def test_fixed_groups_come_first() -> None:
    plan = plan_budget(50_000, hashed_groups=3, num_classes=5, fixed_rows=(6, 6))
    assert plan.rows[:2] == (6, 6) and plan.bytes <= 50_000
