"""The contracts: Case, Truth, Instance, PromptSet, CaseView, Technique, Scores.

Data flows one way: a Case builds a model and its Truth; a Technique sees only a CaseView (model,
prompts, metric; never the Truth) and returns Scores; only ``mibench.scoring`` reads the Truth.

Heavy libraries (torch, pandas) are imported where they are used so that ``mibench list`` stays fast.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from mibench import names

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

    from mibench.circuit import Circuit

TIERS = ("planted", "trap", "literature")


class MibenchError(Exception):
    """An error caused by user input (a name, a file, an argument); its message says what to fix."""


class ScoresError(MibenchError):
    """A technique returned scores that break the Scores contract."""


# --- truth ------------------------------------------------------------------------------------

def granularities_labelled(edges, neurons, sites, direct) -> tuple[str, ...]:
    """The granularities a circuit has truth at: always nodes; edges, neurons and sites where it
    labels some; layers where some node has a direct effect (the truth set is their layers)."""
    present = {"edge": edges, "neuron": neurons, "site": sites, "layer": direct}
    return ("node", *(g for g, labels in present.items() if labels))


@dataclass(frozen=True)
class Truth:
    """Ground-truth labels of a known circuit, at every granularity the case defines.

    ``nodes`` maps each circuit node to its role; ``edges`` maps each circuit edge to its kind
    (``q``, ``k``, ``v`` or ``direct``); ``edge_notes`` marks edges whose path effect alone is nil
    by design: ``nil`` (the case's corruption never moves them: left out of edge scoring) or
    ``redundant`` (another route carries the same information: scored, and checked jointly by the
    case's certificate), each with the reason from circuit.yaml; ``direct`` maps nodes with a direct effect on the logits to
    the sign of that effect; ``neurons`` and ``sites`` are optional finer labels; ``targets`` (traps
    only) names the technique family a trap is built to fool and why.
    """

    nodes: dict[str, str]
    edges: dict[str, str] = field(default_factory=dict)
    edge_notes: dict[str, tuple[str, str]] = field(default_factory=dict)  # edge -> (nil|redundant, why)
    direct: dict[str, int] = field(default_factory=dict)
    neurons: dict[str, str] = field(default_factory=dict)
    sites: dict[str, frozenset[str]] = field(default_factory=dict)
    answer_layer: int | None = None
    targets: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.nodes:
            names.parse_node(name)
        for name in self.edges:
            names.parse_edge(name)
        for name in self.neurons:
            names.parse_node(name)
        for site_set in self.sites.values():
            for name in site_set:
                names.parse_site(name)

    def granularities(self) -> tuple[str, ...]:
        return granularities_labelled(self.edges, self.neurons, self.sites, self.direct)

    @property
    def nil_edges(self) -> set[str]:
        """Circuit edges that edge scoring leaves out: neither truth nor distractor."""
        return {e for e, (note, _) in self.edge_notes.items() if note == "nil"}

    def labels(self, granularity: str) -> dict[str, str]:
        """The truth set at a granularity, each member with its role (or kind)."""
        if granularity == "node":
            return dict(self.nodes)
        if granularity == "edge":
            return {e: kind for e, kind in self.edges.items() if e not in self.nil_edges}
        if granularity == "neuron":
            return dict(self.neurons)
        if granularity == "site":
            return {s: variable for variable, site_set in self.sites.items() for s in sorted(site_set)}
        if granularity == "layer":
            return {names.layer_name(names.node_layer(n)): "direct_effect" for n in self.direct}
        raise ValueError(f"unknown granularity {granularity!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": dict(sorted(self.nodes.items())),
            "edges": dict(sorted(self.edges.items())),
            "edge_notes": {e: list(v) for e, v in sorted(self.edge_notes.items())},
            "direct": dict(sorted(self.direct.items())),
            "neurons": dict(sorted(self.neurons.items())),
            "sites": {k: sorted(v) for k, v in sorted(self.sites.items())},
            "answer_layer": self.answer_layer,
            "targets": dict(sorted(self.targets.items())),
        }

    def digest(self) -> str:
        """A short hash of the truth, stored with every result so a changed circuit is noticed."""
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --- prompts ----------------------------------------------------------------------------------

@dataclass
class PromptSet:
    """Clean and corrupted prompts with their answers, position labels and declared variables.

    All prompts in a set have the same length; ``positions[label][i]`` is the index of ``label``
    in prompt ``i``. The metric reads the final position unless the case says otherwise.
    """

    clean: "torch.Tensor"  # LongTensor [n, seq]
    corrupted: "torch.Tensor"  # LongTensor [n, seq]
    answer: "torch.Tensor"  # LongTensor [n]
    wrong: "torch.Tensor"  # LongTensor [n]
    positions: dict[str, "torch.Tensor"] = field(default_factory=dict)
    variables: dict[str, "torch.Tensor"] = field(default_factory=dict)
    split: str = "test"

    def __post_init__(self) -> None:
        n = self.clean.shape[0]
        if self.corrupted.shape != self.clean.shape:
            raise ValueError(f"corrupted prompts {tuple(self.corrupted.shape)} differ in shape "
                             f"from clean prompts {tuple(self.clean.shape)}")
        for key, value in [("answer", self.answer), ("wrong", self.wrong), *self.positions.items(),
                           *self.variables.items()]:
            if value.shape[0] != n:
                raise ValueError(f"{key} has {value.shape[0]} entries for {n} prompts")

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def labels(self) -> list[str]:
        return list(self.positions)

    def to_tensors(self, prefix: str) -> tuple[dict[str, "torch.Tensor"], dict[str, Any]]:
        """The set as named tensors (for a safetensors file: data, never pickle) and the layout
        that :meth:`from_tensors` needs to rebuild it (the order of labels and variables)."""
        tensors = {f"{prefix}.{key}": getattr(self, key).contiguous()
                   for key in ("clean", "corrupted", "answer", "wrong")}
        for kind in ("positions", "variables"):
            tensors.update({f"{prefix}.{kind}.{name}": value.contiguous()
                            for name, value in getattr(self, kind).items()})
        return tensors, {"positions": list(self.positions), "variables": list(self.variables),
                         "split": self.split}

    @classmethod
    def from_tensors(cls, tensors: dict[str, "torch.Tensor"], prefix: str,
                     layout: dict[str, Any]) -> "PromptSet":
        return cls(*(tensors[f"{prefix}.{key}"] for key in ("clean", "corrupted", "answer", "wrong")),
                   positions={name: tensors[f"{prefix}.positions.{name}"] for name in layout["positions"]},
                   variables={name: tensors[f"{prefix}.variables.{name}"] for name in layout["variables"]},
                   split=layout["split"])

    def take(self, index: "torch.Tensor") -> "PromptSet":
        """The prompts at ``index`` (a LongTensor), with every per-prompt field kept aligned."""
        return PromptSet(self.clean[index], self.corrupted[index], self.answer[index], self.wrong[index],
                         {k: v[index] for k, v in self.positions.items()},
                         {k: v[index] for k, v in self.variables.items()}, self.split)


# --- the task metric, as data ----------------------------------------------------------------

METRIC_READS = ("logit_diff", "log_prob", "centred_logit")
METRIC_TARGETS = ("answer", "next_token")


@dataclass(frozen=True)
class MetricSpec:
    """A case's task metric stated as data, so that a worker process rebuilds it from the prompts
    alone, with no code of the case (and so no way back to its truth).

    ``positions_from_end``: the logit positions read, counted from the end (1 = the final token).
    ``target``: at each position, the token that should win: the prompt's ``answer``, or
    ``next_token`` (the clean prompt's next token, and the answer after the final position).
    ``reads``, per position, averaged over positions:

    * ``logit_diff``: target logit − the prompt's ``wrong`` logit; accuracy: target beats wrong;
    * ``log_prob``: log p(target); accuracy: the target is the top-1 prediction;
    * ``centred_logit``: target logit − mean logit (a uniform shift of all logits does not count);
      accuracy: the target is the top-1 prediction.
    """

    reads: str = "logit_diff"
    target: str = "answer"
    positions_from_end: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        if self.reads not in METRIC_READS:
            raise ValueError(f"metric reads must be one of {', '.join(METRIC_READS)}, got {self.reads!r}")
        if self.target not in METRIC_TARGETS:
            raise ValueError(f"metric target must be one of {', '.join(METRIC_TARGETS)}, got {self.target!r}")
        if not self.positions_from_end or sorted(set(self.positions_from_end), reverse=True) != \
                list(self.positions_from_end) or min(self.positions_from_end) < 1:
            raise ValueError(f"positions_from_end must be distinct, >= 1 and descending (so positions "
                             f"ascend), got {self.positions_from_end}")

    def to_json(self) -> dict[str, Any]:
        return {"reads": self.reads, "target": self.target,
                "positions_from_end": list(self.positions_from_end)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "MetricSpec":
        return cls(data["reads"], data["target"], tuple(int(k) for k in data["positions_from_end"]))


# --- cases ------------------------------------------------------------------------------------

SPLITS = {"train": 0, "test": 1}


def prompt_rng(seed: int, split: str, sample: int = 0):
    """The random stream of prompt sample ``sample`` of the instance of ``seed``, for ``split``.

    Streams of different splits and samples are independent, and none depends on the model's
    construction: any number of prompt samples can be drawn for one instance. Sample 0 is the
    stream the leaderboard's main tables use."""
    import numpy as np

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    # sample 0 keeps the key it always had; later samples extend it (never with a trailing 0)
    return np.random.default_rng([seed, 1, SPLITS[split], *([sample] if sample else [])])


#: Model sizes a case can build, smallest first: ``small`` (a few layers and heads), ``medium`` (at
#: least 6 layers × 8 heads: the circuit is a few nodes among many busy ones), ``large`` (12 layers ×
#: 12 heads, where built).
SIZES = ("small", "medium", "large")
#: The size the command line runs and the leaderboard shows unless ``--size`` says otherwise.
LEADERBOARD_SIZE = "medium"
#: The size a case builds when Python code does not say: the cheapest (tests, notebooks). A figure
#: meant to match the leaderboard needs ``size=LEADERBOARD_SIZE``.
DEFAULT_SIZE = "small"


@dataclass
class Instance:
    """One seed of a case at one size: the planted model and its ground truth."""

    model: Any  # transformer_lens TransformerBridge
    truth: Truth
    seed: int
    size: str = DEFAULT_SIZE


class Case(ABC):
    """A known circuit. Subclasses set the metadata and implement build, prompts and metric.

    A case states its circuit once, in ``circuit`` (its ``circuit.yaml``): ``granularities`` (the
    granularities it has truth at) and ``citation`` (the first of the file's citations) are read
    from it when the subclass is defined, and the certificate checks each built instance against it.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    tier: ClassVar[str] = "planted"
    circuit: ClassVar["Circuit | None"] = None
    granularities: ClassVar[tuple[str, ...]] = ("node",)
    citation: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: A trap's failure mode in a few words (the leaderboard's "survives … / fooled by …"); "" elsewhere
    failure_mode: ClassVar[str] = ""
    #: Roles exempt from the single-node necessity check, each with the reason (for example a
    #: backup head that is silent until the main head is ablated). Their own check replaces it.
    necessity_exempt: ClassVar[dict[str, str]] = {}
    n_prompts: ClassVar[int] = 64
    #: the task metric, as data (see :class:`MetricSpec`); default: logit difference answer − wrong
    #: at the final position
    metric: ClassVar[MetricSpec] = MetricSpec()
    #: the sizes (of SIZES) this case builds
    sizes: ClassVar[tuple[str, ...]] = ("small",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        circuit = cls.__dict__.get("circuit")
        if circuit is not None:
            cls.granularities = circuit.granularities()
            cls.citation = circuit.citations[0] if circuit.citations else ""

    @abstractmethod
    def build(self, seed: int, size: str = DEFAULT_SIZE) -> Instance:
        """The planted model and its truth for one seed at one size (deterministic); call
        :meth:`check_size` first."""

    def truth(self, seed: int, size: str = DEFAULT_SIZE) -> Truth:
        """The ground truth of the instance of ``seed`` at ``size`` (for scoring a result made
        elsewhere, such as an imported graph); a literature case's labels need no weights."""
        return self.build(seed, size).truth

    def check_size(self, size: str) -> None:
        """Raise a one-line error unless this case builds ``size``."""
        if size not in self.sizes:
            known = "" if size in SIZES else f" (sizes are {', '.join(SIZES)})"
            raise MibenchError(f"case {self.name!r} has no {size!r} size{known}; it builds "
                               f"{', '.join(self.sizes)}: pass --size with one of them")

    @abstractmethod
    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """``n`` clean/corrupted prompt pairs for the instance of ``seed`` (whose vocabulary roles
        the prompts use); ``split`` is ``train`` or ``test``; ``sample`` picks one of any number
        of independent draws (draw its randomness from :func:`prompt_rng`)."""

    def task_metric(self, prompts: PromptSet) -> "TaskMetric":
        """The metric bound to ``prompts``, as techniques, certificates and scoring call it."""
        return TaskMetric(self.metric, prompts)

    def extra_checks(self, instance: Instance, prompts: PromptSet, probe: Any) -> list[Any]:
        """Role-specific certificate checks (``mibench.certificate.Check``); none by default."""
        return []


# --- the task metric, bound to prompts -----------------------------------------------------------

class TaskMetric:
    """A :class:`MetricSpec` bound to a prompt set.

    ``metric(logits)`` is the task metric, the mean over prompts (differentiable);
    ``metric.per_prompt(logits)`` the ``[n]`` values; ``metric.accuracy(logits)`` the task accuracy;
    ``metric.positions`` the logit positions it reads (ascending). Each accepts the full logits
    ``[n, seq, vocab]`` or only those at ``metric.positions`` (what
    :class:`mibench.model.ablation.BaseRun` returns when asked to unembed only the positions the
    metric reads); pass ``prompts`` to evaluate on another prompt set of the same case.
    """

    def __init__(self, spec: MetricSpec, prompts: PromptSet) -> None:
        self.spec = spec
        self.prompts = prompts
        self.positions = self._positions(prompts)

    def _positions(self, prompts: PromptSet) -> list[int]:
        seq = int(prompts.clean.shape[1])
        if max(self.spec.positions_from_end) > seq:
            raise ValueError(f"the metric reads {max(self.spec.positions_from_end)} positions from "
                             f"the end of prompts of length {seq}")
        return [seq - k for k in self.spec.positions_from_end]

    def read(self, logits: "torch.Tensor", prompts: PromptSet | None = None) -> "torch.Tensor":
        """The logits at the metric's positions (unchanged if they are only those already)."""
        prompts = prompts if prompts is not None else self.prompts
        positions = self.positions if prompts is self.prompts else self._positions(prompts)
        seq = int(prompts.clean.shape[1])
        if logits.shape[1] == seq:
            # with ascending distinct positions, len == seq means every position: indexing is a no-op
            return logits[:, positions]
        if logits.shape[1] == len(positions):
            return logits
        raise ValueError(f"logits cover {logits.shape[1]} positions; the metric reads {positions} of "
                         f"prompts of length {seq}")

    def targets(self, prompts: PromptSet | None = None) -> "torch.Tensor":
        """The token that should win at each read position, ``[n, len(positions)]``."""
        import torch

        prompts = prompts if prompts is not None else self.prompts
        n = len(prompts)
        if self.spec.target == "answer":
            return prompts.answer[:, None].expand(n, len(self.spec.positions_from_end))
        following = torch.cat([prompts.clean[:, 1:], prompts.answer[:, None]], dim=1)
        positions = self.positions if prompts is self.prompts else self._positions(prompts)
        return following[:, positions]

    def per_prompt(self, logits: "torch.Tensor", prompts: PromptSet | None = None) -> "torch.Tensor":
        import torch

        prompts = prompts if prompts is not None else self.prompts
        read, targets = self.read(logits, prompts), self.targets(prompts)
        if self.spec.reads == "log_prob":
            read = torch.log_softmax(read, dim=-1)
        target = read.gather(-1, targets[..., None])[..., 0]  # [n, positions]
        if self.spec.reads == "logit_diff":
            return (target - self._wrong(read, prompts)).mean(dim=-1)
        if self.spec.reads == "log_prob":
            return target.mean(dim=-1)
        return (target - read.mean(dim=-1)).mean(dim=-1)

    @staticmethod
    def _wrong(read: "torch.Tensor", prompts: PromptSet) -> "torch.Tensor":
        """The ``wrong`` token's logit at every read position, ``[n, positions]``."""
        return read.gather(-1, prompts.wrong[:, None, None].expand(-1, read.shape[1], 1))[..., 0]

    def __call__(self, logits: "torch.Tensor", prompts: PromptSet | None = None) -> "torch.Tensor":
        return self.per_prompt(logits, prompts).mean()

    def accuracy(self, logits: "torch.Tensor", prompts: PromptSet | None = None) -> float:
        prompts = prompts if prompts is not None else self.prompts
        read, targets = self.read(logits, prompts), self.targets(prompts)
        if self.spec.reads == "logit_diff":
            target = read.gather(-1, targets[..., None])[..., 0]
            return float((target > self._wrong(read, prompts)).float().mean())
        return float((read.argmax(-1) == targets).float().mean())


# --- what a technique sees --------------------------------------------------------------------

class CaseView:
    """Everything a technique may use: model, prompts, metric, position labels. Never the truth.

    ``prompts`` is the test split (the one scored); ``train_prompts`` is a disjoint split for
    techniques that fit something (probes, tuned lens). ``metric(logits, prompts=None)`` returns
    the scalar task metric (mean over prompts, differentiable); ``metric_per_prompt`` the ``[n]``
    values; ``metric.positions`` the logit positions it reads (see :class:`TaskMetric`). ``seed``
    is the run's seed for anything random; it is derived from, but does not name, the instance's
    seed. The runner builds a view in a worker process from data alone (:mod:`mibench.worker`), so
    nothing reachable from it leads back to the case's code or truth.
    """

    def __init__(self, model: Any, prompts: PromptSet, train_prompts: PromptSet, metric: MetricSpec,
                 granularity: str, seed: int, case_name: str) -> None:
        self.metric = TaskMetric(metric, prompts)
        self.metric_per_prompt = self.metric.per_prompt
        self.model = model
        self.prompts = prompts
        self.train_prompts = train_prompts
        self.granularity = granularity
        self.seed = seed
        self.case_name = case_name
        self.tokenizer = getattr(model, "tokenizer", None)
        self.shape = names.Shape.of(model)

    @classmethod
    def of(cls, case: Case, model: Any, prompts: PromptSet, train_prompts: PromptSet,
           granularity: str, seed: int) -> "CaseView":
        """A view of ``case``'s model in this process (tests, notebooks); the runner's workers
        build theirs from data."""
        return cls(model, prompts, train_prompts, case.metric, granularity, seed, case.name)

    @property
    def position_labels(self) -> list[str]:
        return self.prompts.labels

    def components(self, granularity: str | None = None) -> list[str]:
        return names.components(self.shape, granularity or self.granularity, self.position_labels)


# --- techniques and their output --------------------------------------------------------------

class Technique(ABC):
    """One localisation technique. Higher scores mean more important.

    ``granularity`` is the technique's main granularity; ``granularities`` lists every one it can
    score (default: just the main one). The runner runs each that a case has truth for and labels
    the non-main runs ``name@granularity``; ``view.granularity`` says which one is asked for.
    ``signed = True`` means scores are signed effects; scoring then ranks by magnitude.
    ``cost`` is a short human description of the passes it needs (shown by ``mibench list``).
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    granularity: ClassVar[str] = "node"
    granularities: ClassVar[tuple[str, ...]] = ()
    signed: ClassVar[bool] = False
    cost: ClassVar[str] = ""
    description: ClassVar[str] = ""
    citation: ClassVar[str] = ""

    @abstractmethod
    def attribute(self, view: CaseView) -> "pd.Series":
        """Score every component of ``view.components()``."""

    @classmethod
    def supported_granularities(cls) -> tuple[str, ...]:
        return cls.granularities or (cls.granularity,)


def run_label(technique: str, granularity: str, main_granularity: str) -> str:
    """How a run is named in results and tables: ``dla``, or ``causal_tracing@site``."""
    return technique if granularity == main_granularity else f"{technique}@{granularity}"


def split_label(label: str) -> tuple[str, str | None]:
    name, _, granularity = label.partition("@")
    return name, granularity or None


def make_scores(values: dict[str, float] | Any, index: list[str] | None = None) -> "pd.Series":
    """Build a Scores series from a mapping (or from values aligned with ``index``)."""
    import pandas as pd

    if index is not None:
        return pd.Series([float(v) for v in values], index=list(index), dtype="float64")
    return pd.Series({k: float(v) for k, v in dict(values).items()}, dtype="float64")


def validate_scores(scores: Any, expected: list[str], technique: str) -> "pd.Series":
    """Return ``scores`` reindexed to ``expected`` or raise ScoresError naming the first problems."""
    import numpy as np
    import pandas as pd

    if not isinstance(scores, pd.Series):
        raise ScoresError(f"technique {technique!r} returned {type(scores).__name__}, expected a "
                          f"pandas Series indexed by component names")
    if scores.index.has_duplicates:
        dup = list(scores.index[scores.index.duplicated()][:3])
        raise ScoresError(f"technique {technique!r} scored some components twice: {dup}")
    expected_set = set(expected)
    unknown = [c for c in scores.index if c not in expected_set]
    if unknown:
        raise ScoresError(f"technique {technique!r} returned unknown component names {unknown[:3]}"
                          f" ({len(unknown)} in all); expected names like {expected[:3]}")
    missing = [c for c in expected if c not in scores.index]
    if missing:
        raise ScoresError(f"technique {technique!r} left {len(missing)} components unscored, "
                          f"first {missing[:3]}; every component of the granularity needs a score")
    try:
        values = scores.reindex(expected).astype("float64")
    except (TypeError, ValueError) as exc:
        raise ScoresError(f"technique {technique!r} returned non-numeric scores: {exc}") from exc
    bad = values[~np.isfinite(values.to_numpy())]
    if len(bad):
        raise ScoresError(f"technique {technique!r} returned non-finite scores for "
                          f"{list(bad.index[:3])} ({len(bad)} in all); every score must be finite")
    return values


def validate_roles(roles: Any, scored: Any, technique: str) -> dict[str, str] | None:
    """The role labels a technique attached to its scores (``scores.attrs["roles"]``: a
    ``{component: role}`` dict over scored components, as a role detector returns), or None when
    it attached none; raise ScoresError naming what is wrong."""
    if roles is None:
        return None
    if not isinstance(roles, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in roles.items()):
        raise ScoresError(f"technique {technique!r} set scores.attrs['roles'] to something other "
                          f"than a dict of component name -> role name")
    scored = set(scored)
    unknown = [c for c in roles if c not in scored]
    if unknown:
        raise ScoresError(f"technique {technique!r} labelled {unknown[:3]} with roles, which are "
                          f"not components it scored")
    return dict(roles)
