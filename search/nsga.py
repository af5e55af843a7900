"""The search loops: pymoo's NSGA-II (ask / tell) and random search with the same budget.

Both minimise (1 - accuracy, expected cost) under the inequality constraints of
``search.evaluate.Constraints`` (pymoo ranks feasible before infeasible and infeasible by
summed violation: no penalty terms). Each generation ends with ``on_generation``, which the
runner uses to write outputs and to checkpoint a ``Phase``: the pickled algorithm (population,
its random generator, the backbone budget) or the random search's generator, plus the archive
and history. Restoring a phase continues the exact same sequence of genomes.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.problem import Problem

from nachos.config import SearchConfig
from search.evaluate import Archive, CandidateEvaluator
from search.genome import GenomeCodec
from search.operators import (BackboneBudget, BudgetRepair, GenomeCrossover, GenomeMutation, GenomeSampling,
                              repair_rows)


@dataclass
class Phase:
    """Progress of one algorithm: what a resumed run needs to continue it."""

    algorithm: str  # "nsga2" or "random"
    archive: Archive
    history: list[dict[str, Any]] = field(default_factory=list)
    n_eval: int = 0
    done: bool = False
    payload: bytes = b""  # pickled algorithm state

    def to_state(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "records": self.archive.records, "refined": self.archive.refined,
                "history": self.history, "n_eval": self.n_eval, "done": self.done, "payload": self.payload}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> Phase:
        return cls(s["algorithm"], Archive(s["algorithm"], s["records"], s["refined"]), list(s["history"]),
                   int(s["n_eval"]), bool(s["done"]), s["payload"])


OnGeneration = Callable[[Phase, int], None]


class SubnetProblem(Problem):
    """Integer genome vectors -> F = (1 - accuracy, expected cost), G = scaled constraint violations.

    ``evaluate_fn`` (set by the loop, not pickled) does the work, so that a checkpointed
    algorithm carries no model, caches or open files."""

    def __init__(self, codec: GenomeCodec, n_constr: int) -> None:
        super().__init__(n_var=codec.n_var, n_obj=2, n_ieq_constr=n_constr, xl=codec.xl, xu=codec.xu, vtype=int)
        self.codec = codec
        self.evaluator: CandidateEvaluator | None = None  # for the operators' cost checks
        self.evaluate_fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["evaluate_fn"] = state["evaluator"] = None
        return state

    def _evaluate(self, X, out, *args, **kwargs):
        assert self.evaluate_fn is not None, "SubnetProblem.evaluate_fn is not attached"
        F, G = self.evaluate_fn(np.asarray(X))
        out["F"] = F
        if self.n_ieq_constr:
            out["G"] = G


def _objectives(evaluator: CandidateEvaluator, recs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    F = np.array([[1.0 - r["accuracy"], evaluator.objective(r)] for r in recs], dtype=np.float64)
    names = evaluator.constraints.active
    G = np.array([[r["violations"][n] for n in names] for r in recs], dtype=np.float64).reshape(len(recs), len(names))
    return F, G


def run_nsga2(codec: GenomeCodec, evaluator: CandidateEvaluator, search: SearchConfig, seed: int,
              phase: Phase | None, on_generation: OnGeneration) -> Phase:
    if phase is not None and phase.done:
        return phase
    if phase is not None and phase.payload:
        algorithm = pickle.loads(phase.payload)
        problem = algorithm.problem
    else:
        phase = Phase("nsga2", Archive("nsga2"))
        problem = SubnetProblem(codec, len(evaluator.constraints.active))
        # more initial backbones than the budget admits would be moved onto the admitted ones by the
        # repair, and the duplicates this makes would be dropped from the first population
        init = min(search.init_backbones, search.max_backbones or search.init_backbones)
        algorithm = NSGA2(pop_size=search.population, sampling=GenomeSampling(init),
                          crossover=GenomeCrossover(search.arch_crossover_prob),
                          mutation=GenomeMutation(search.arch_mutation_prob), repair=BudgetRepair(),
                          eliminate_duplicates=True)
        algorithm.setup(problem, termination=("n_gen", search.generations), seed=seed, verbose=False)
        algorithm.data["backbone_budget"] = BackboneBudget(search.max_backbones)
    problem.codec, problem.evaluator = codec, evaluator
    while algorithm.has_next():
        generation = int(algorithm.n_iter or 1) if algorithm.is_initialized else 1
        source = "evolved" if algorithm.is_initialized else "sampled"  # the first population is drawn at random

        def evaluate(X: np.ndarray, gen: int = generation, source: str = source) -> tuple[np.ndarray, np.ndarray]:
            recs = evaluator.evaluate([codec.decode(x) for x in X], phase.archive, gen, source=source)
            algorithm.data["backbone_budget"].settle(codec, X)
            return _objectives(evaluator, recs)

        problem.evaluate_fn = evaluate
        pop = algorithm.ask()
        if pop is None or len(pop) == 0:
            break
        algorithm.evaluator.eval(problem, pop)
        algorithm.tell(infills=pop)
        problem.evaluate_fn = None
        phase.n_eval = int(algorithm.evaluator.n_eval)
        phase.done = not algorithm.has_next()
        phase.payload = pickle.dumps(algorithm)
        on_generation(phase, generation)
    phase.done = True
    return phase


def run_random(codec: GenomeCodec, evaluator: CandidateEvaluator, search: SearchConfig, seed: int,
               budget_evals: int, phase: Phase | None, on_generation: OnGeneration) -> Phase:
    """Uniformly random genomes in batches of ``population``, with the same backbone budget."""
    if phase is not None and phase.done:
        return phase
    if phase is not None and phase.payload:
        state = pickle.loads(phase.payload)
        rng, budget, generation = state["rng"], state["budget"], state["generation"]
    else:
        phase = Phase("random", Archive("random"))
        # its own stream: the baseline must not replay NSGA-II's initial population
        rng = np.random.default_rng([seed, 1])
        budget, generation = BackboneBudget(search.max_backbones), 0
    while phase.n_eval < budget_evals:
        generation += 1
        n = min(search.population, budget_evals - phase.n_eval)
        X = np.stack([codec.encode(codec.random(rng)) for _ in range(n)])
        X = repair_rows(codec, X, budget, evaluator)
        evaluator.evaluate([codec.decode(x) for x in X], phase.archive, generation, source="sampled")
        budget.settle(codec, X)  # every row ran: only empties the admissions list
        phase.n_eval += n
        phase.done = phase.n_eval >= budget_evals
        phase.payload = pickle.dumps({"rng": rng, "budget": budget, "generation": generation})
        on_generation(phase, generation)
    phase.done = True
    return phase
