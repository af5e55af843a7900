"""Exit policies (torch vs numpy, hand-worked decisions) and exit losses (NACHOS terms fixed)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from exits import losses, policies as P


# ----------------------------------------------------------------------------- policies
@pytest.mark.parametrize("criterion", P.CRITERIA)
def test_numpy_and_torch_agree(criterion: str) -> None:
    gen = torch.Generator().manual_seed(0)
    E, N, C = 3, 2000, 10 + (criterion == "learned")
    logits = [torch.randn(N, C, generator=gen) * 3 for _ in range(E)]
    conf_t = torch.stack([P.exit_confidence(l, criterion) for l in logits])
    conf_n = np.stack([P.exit_confidence_np(l.numpy(), criterion) for l in logits])
    np.testing.assert_allclose(conf_t.numpy(), conf_n, atol=1e-5)
    assert conf_t.min() >= 0 and conf_t.max() <= 1
    # bit for bit: search scores with the numpy twin what eval decides with the torch one
    wide = torch.rand(6, 20000, generator=gen)
    np.testing.assert_array_equal(P.exit_scores(wide, criterion).numpy(), P.exit_scores_np(wide.numpy(), criterion))
    assert P.exit_scores(wide[:0], criterion).shape == (0, 20000)
    thresholds = torch.rand(64, E, generator=gen)  # a batch of threshold sets, as search scores them
    dec_t = P.decide_exits(conf_t, thresholds, criterion)
    dec_n = P.decide_exits_np(conf_t.numpy(), thresholds.numpy(), criterion)
    assert dec_t.shape == (64, N)
    np.testing.assert_array_equal(dec_t.numpy(), dec_n)
    # The batched call is the same as one call per threshold set.
    for i in (0, 17, 63):
        np.testing.assert_array_equal(P.decide_exits_np(conf_t.numpy(), thresholds[i].numpy(), criterion), dec_n[i])
    assert {0, 1, 2, 3} >= set(np.unique(dec_n).tolist())


def test_softmax_decisions_by_hand() -> None:
    # Confidences per exit (rows) for five samples (columns), thresholds 0.85 / 0.75 / 0.95.
    conf = np.array([[0.90, 0.50, 0.20, 0.60, 0.10],
                     [0.95, 0.80, 0.30, 0.65, 0.10],
                     [0.99, 0.90, 0.40, 0.70, 0.96]], dtype=np.float32)
    thr = [0.85, 0.75, 0.95]
    expected = [0, 1, 3, 3, 2]
    assert P.decide_exits_np(conf, thr, "softmax").tolist() == expected
    assert P.decide_exits(torch.from_numpy(conf), thr, "softmax").tolist() == expected


def test_softmax_confidence_is_max_probability() -> None:
    logits = torch.tensor([[math.log(3.0), 0.0, 0.0, 0.0]])  # p = [0.5, 1/6, 1/6, 1/6]
    assert P.exit_confidence(logits, "softmax").item() == pytest.approx(0.5, abs=1e-6)


def test_entropy_confidence_and_decisions_by_hand() -> None:
    big = 1e4
    # p = [0.5, 0.5, 0, 0] -> H = log 2, confidence = 1 - log 2 / log 4 = 0.5; uniform -> 0; one-hot -> 1.
    half = torch.tensor([[0.0, 0.0, -big, -big]])
    uniform = torch.zeros(1, 4)
    onehot = torch.tensor([[big, 0.0, 0.0, 0.0]])
    for fn in (lambda l: P.exit_confidence(l, "entropy").item(),
               lambda l: float(P.exit_confidence_np(l.numpy(), "entropy")[0])):
        assert fn(half) == pytest.approx(0.5, abs=1e-5)
        assert fn(uniform) == pytest.approx(0.0, abs=1e-5)
        assert fn(onehot) == pytest.approx(1.0, abs=1e-5)
    # Three exits, three samples: sample 0 is uniform, half, one-hot; sample 1 is one-hot at exit 0;
    # sample 2 is half everywhere. Thresholds 0.9 / 0.4 / 0.9.
    exits = [torch.cat([uniform, onehot, half]), torch.cat([half, onehot, half]), torch.cat([onehot, onehot, half])]
    conf = torch.stack([P.exit_confidence(l, "entropy") for l in exits])
    assert P.decide_exits(conf, [0.9, 0.4, 0.9], "entropy").tolist() == [1, 0, 1]
    assert P.decide_exits(conf, [0.9, 0.6, 0.9], "entropy").tolist() == [2, 0, 3]


def test_learned_rule_is_cumulative() -> None:
    # c = 0.5 at every exit: cumulative mass 0.5, 0.75, 0.875.
    conf = np.array([[0.5, 0.2, 0.7],
                     [0.5, 0.5, 0.0],
                     [0.5, 0.1, 0.0]], dtype=np.float32)
    thr = [0.6, 0.8, 0.85]
    np.testing.assert_allclose(P.exit_scores_np(conf, "learned")[:, 0], [0.5, 0.75, 0.875])
    np.testing.assert_allclose(P.exit_scores_np(conf, "learned")[:, 1], [0.2, 0.6, 0.64], atol=1e-6)
    assert P.decide_exits_np(conf, thr, "learned").tolist() == [2, 3, 0]
    # The same confidences read per exit (softmax-style, not cumulative) never reach 0.85 at exit 2.
    assert P.decide_exits_np(conf, thr, "softmax").tolist() == [3, 3, 0]
    assert P.decide_exits(torch.from_numpy(conf), thr, "learned").tolist() == [2, 3, 0]
    # Learned confidence is the sigmoid of the extra last column.
    logits = torch.tensor([[5.0, -5.0, 0.0], [5.0, -5.0, math.log(3.0)]])
    assert P.exit_confidence(logits, "learned").tolist() == pytest.approx([0.5, 0.75])
    assert P.class_logits(logits, "learned").shape == (2, 2)
    assert P.class_logits(logits, "softmax").shape == (2, 3)


def test_exit_probabilities_sum_to_one() -> None:
    conf = torch.tensor([[0.5, 0.2], [0.5, 0.5], [0.5, 0.1]])
    probs = P.exit_probabilities(conf)
    assert probs.shape == (4, 2)
    torch.testing.assert_close(probs[:, 0], torch.tensor([0.5, 0.25, 0.125, 0.125]))
    torch.testing.assert_close(probs.sum(0), torch.ones(2))
    # The cumulative sums of p are the scores the thresholds are compared with.
    torch.testing.assert_close(probs[:-1].cumsum(0), P.exit_scores(conf, "learned"))
    torch.testing.assert_close(P.exit_probabilities(conf[:0]), torch.ones(1, 2))  # no exit: all at the final


def test_threshold_one_disables_an_exit() -> None:
    conf = np.ones((2, 3), dtype=np.float32)  # saturated confidences
    assert P.decide_exits_np(conf, [1.0, 0.5], "softmax").tolist() == [1, 1, 1]
    assert P.decide_exits_np(conf, [1.0, 1.0], "softmax").tolist() == [2, 2, 2]
    assert P.decide_exits(torch.ones(2, 3), [1.0, 1.0], "learned").tolist() == [2, 2, 2]
    assert P.decide_exits_np(np.zeros((0, 3), np.float32), np.zeros(0), "softmax").tolist() == [0, 0, 0]


def test_unknown_criterion_is_refused() -> None:
    with pytest.raises(ValueError, match="softmax"):
        P.exit_confidence(torch.zeros(1, 3), "margin")


# ----------------------------------------------------------------------------- losses
def test_exit_loss_parts_and_detached_teacher() -> None:
    gen = torch.Generator().manual_seed(1)
    target = torch.randint(0, 10, (32,), generator=gen)
    final = torch.randn(32, 10, generator=gen, requires_grad=True)
    heads = [torch.randn(32, 10, generator=gen, requires_grad=True) for _ in range(2)]
    out = losses.exit_loss(heads, final, target, w_ce=[1.0, 0.5], w_distill=2.0, temperature=2.0)
    expected = sum(w * out[f"exit_{k}/ce"] + 2.0 * out[f"exit_{k}/distill"] for k, w in enumerate([1.0, 0.5]))
    torch.testing.assert_close(out["total"].detach(), expected)
    out["total"].backward()
    assert final.grad is None  # the exits learn from the final classifier, never the reverse
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in heads)
    # Distilling from oneself is free.
    same = losses.exit_loss([final.detach()], final.detach(), target, w_ce=0.0, w_distill=1.0)
    assert same["total"].item() == pytest.approx(0.0, abs=1e-6)
    # The learned criterion's confidence column is ignored by the classification loss.
    with_conf = [torch.cat([h.detach(), torch.full((32, 1), 100.0)], 1) for h in heads]
    a = losses.exit_loss(with_conf, final, target, criterion="learned")["total"]
    b = losses.exit_loss([h.detach() for h in heads], final, target)["total"]
    torch.testing.assert_close(a, b)


def test_balanced_bce_weights() -> None:
    w = losses.balanced_bce_weights(torch.tensor([1.0, 1.0, 1.0, 0.0]))
    torch.testing.assert_close(w, torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0]))
    assert w[:3].sum().item() == pytest.approx(w[3:].sum().item())  # both classes weigh the same
    torch.testing.assert_close(losses.balanced_bce_weights(torch.ones(5)), torch.ones(5))
    torch.testing.assert_close(losses.balanced_bce_weights(torch.zeros(3)), torch.ones(3))


def test_bce_term_uses_balanced_weights() -> None:
    # Exit 0 right on 3 of 4 samples; the BCE of a constant confidence logit 0 is log 2 whatever the weights,
    # so move it: with z = 2 (c ~ 0.88) the wrong sample costs most, and balancing weighs it 2 vs 2/3.
    target = torch.tensor([0, 0, 0, 1])
    logits = torch.tensor([[5.0, 0.0, 2.0]] * 4)
    out = losses.learned_exit_terms([logits], target, w_cls=0, w_macs=0, w_support=0)
    c = torch.sigmoid(torch.tensor(2.0))
    expected = (3 * (2 / 3) * -torch.log(c) + 2.0 * -torch.log(1 - c)) / 4
    assert out["bce"].item() == pytest.approx(expected.item(), rel=1e-5)


def _conf_logits(z: torch.Tensor, num_classes: int = 10) -> list[torch.Tensor]:
    """Heads' outputs whose confidence logits are the rows of z (E, N); class logits zero."""
    return [torch.cat([torch.zeros(z.shape[1], num_classes), zi.unsqueeze(1)], 1) for zi in z]


def test_macs_regulariser_gradient_over_and_under_budget() -> None:
    costs = torch.tensor([1.0, 2.0, 3.0, 4.0])  # cumulative cost of leaving at exits 0, 1, 2, final
    target = torch.zeros(8, dtype=torch.long)
    for max_macs, over in ((1.5, True), (10.0, False)):
        z = torch.full((3, 8), -1.0, requires_grad=True)
        out = losses.learned_exit_terms(_conf_logits(z), target, costs=costs, max_macs=max_macs,
                                        w_cls=0, w_bce=0, w_support=0)
        out["total"].backward()
        if over:
            assert out["macs"].item() > 0
            assert z.grad.abs().sum() > 0
            assert (z.grad[0] < 0).all()  # more confidence at the cheapest exit lowers the cost
        else:
            assert out["macs"].item() == 0
            assert z.grad.abs().sum() == 0
    # Hand value: c = 0.5 everywhere -> p = (.5, .25, .125, .125), M = .5 + .5 + .375 + .5 = 1.875.
    probs = P.exit_probabilities(torch.full((3, 1), 0.5))
    assert losses.expected_macs(probs, costs).item() == pytest.approx(1.875)
    reg = losses.macs_regulariser(probs, costs, max_macs=1.5)
    assert reg.item() == pytest.approx((1.875 - 1.5) / (4.0 - 1.5))


def test_support_term_compares_per_sample_vectors() -> None:
    # Support samples: exit 0 right on class 0 always, on class 1 half the time; exit 1 always right.
    correct = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    labels = torch.tensor([0, 0, 1, 1])
    S = losses.support_accuracy(correct, labels, num_classes=3)
    assert S.shape == (3, 2)
    torch.testing.assert_close(S, torch.tensor([[1.0, 1.0], [0.5, 1.0], [0.75, 1.0]]))  # class 2 absent: overall
    conf = torch.tensor([[0.9, 0.2, 0.5], [0.6, 1.0, 0.3]])  # (E=2, N=3)
    target = torch.tensor([0, 1, 2])
    got = losses.support_loss(conf, target, S)
    manual = np.mean([np.mean([(S[target[n], i].item() - conf[i, n].item()) ** 2 for i in range(2)])
                      for n in range(3)])
    assert got.shape == ()
    assert got.item() == pytest.approx(manual)
    # The reference code's (n,) vs (n, 1) broadcast averages over all (n, n') pairs: these inputs tell it apart
    wrong = np.mean([[(S[target[m], i].item() - conf[i, n].item()) ** 2 for m in range(3) for n in range(3)]
                     for i in range(2)])
    assert got.item() != pytest.approx(wrong)


def test_learned_terms_named_and_switchable() -> None:
    gen = torch.Generator().manual_seed(2)
    heads = [torch.randn(16, 11, generator=gen, requires_grad=True) for _ in range(3)]
    target = torch.randint(0, 10, (16,), generator=gen)
    S = torch.rand(10, 3, generator=gen)
    out = losses.learned_exit_terms(heads, target, final_logits=torch.randn(16, 10, generator=gen),
                                    costs=torch.tensor([1.0, 2.0, 3.0, 5.0]), max_macs=1.0, support=S)
    assert {"cls", "bce", "macs", "support", "expected_macs", "total"} <= set(out)
    torch.testing.assert_close(out["total"].detach(), out["cls"] + out["bce"] + out["macs"] + out["support"])
    out["total"].backward()
    assert all(h.grad[:, -1].abs().sum() > 0 for h in heads)
    off = losses.learned_exit_terms(heads, target, w_cls=0, w_bce=0, w_macs=0, w_support=0)
    assert set(off) == {"total"} and off["total"].item() == 0
    with pytest.raises(ValueError, match="costs"):
        losses.learned_exit_terms(heads, target, w_macs=1.0)


# ----------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("bins", [5, 15, 100])
def test_calibration_bins_are_lo_exclusive_hi_inclusive_at_every_edge(bins: int) -> None:
    from exits.metrics import calibration_bins

    # k / bins belongs to bin k - 1, 0 to the first; ceil(conf * bins) - 1 put 0.07 in bin 7 (0.07 * 100 > 7)
    edges = np.arange(bins + 1) / bins
    assert calibration_bins(edges, bins).tolist() == [0] + list(range(bins))
    assert calibration_bins(np.nextafter(edges[1:-1], 2.0), bins).tolist() == list(range(1, bins))
    assert calibration_bins(np.array([-0.5, 1.5]), bins).tolist() == [0, bins - 1]  # clipped


def test_expected_calibration_error_by_hand_empty_and_one_for_all() -> None:
    from exits.metrics import expected_calibration_error as ece

    # 0.2 is the first bin's upper edge: 0.2 and 0.25 fall in two bins, 0.5 * |0.2 - 1| + 0.5 * |0.25 - 0|
    assert ece(np.array([0.2, 0.25]), np.array([1, 0]), bins=5) == pytest.approx(0.525)
    assert ece(np.array([0.1, 0.3]), np.array([0, 1]), bins=5) == pytest.approx(0.5 * 0.1 + 0.5 * 0.7)
    gen = torch.Generator().manual_seed(0)
    conf = torch.rand(1000, generator=gen)
    right = torch.rand(1000, generator=gen) < conf
    assert ece(conf, right) == ece(conf.double().numpy(), right.numpy())  # torch and numpy inputs alike
    assert math.isnan(ece(np.empty(0), np.empty(0))) and math.isnan(ece(torch.empty(0), torch.empty(0)))
    with pytest.raises(ValueError, match="3 confidences for 2"):
        ece(np.ones(3), np.ones(2))
