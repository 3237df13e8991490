"""The model catalog: which weights each model name means, and how to check its outputs.

The operator keeps it as a JSON file (``tessera catalog calibrate`` writes entries). Each
model is pinned to the SHA-256 of its weights, carries audit tolerances calibrated on
honest runs that differ in dtype, batch size and thread count, and reference outputs for
the join challenge a provider answers before it is routed for the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Tolerances(_Model):
    """How far an honest provider's output may sit from the auditor's numbers.

    - ``logprob_abs_max``: largest |claimed - audited| raw log-probability for one token;
    - ``logprob_abs_mean``: largest mean of that difference over one choice;
    - ``greedy_gap``: at temperature 0, largest (top-1 log-prob - chosen token's log-prob);
    - ``top_k`` / ``tail_fraction``: in sampled output, at most this fraction of tokens
      (plus one) may rank below ``top_k``;
    - ``min_cosine``: embeddings: least cosine similarity to the auditor's vector.
    """

    logprob_abs_max: Annotated[float, Field(gt=0)] = 0.5
    logprob_abs_mean: Annotated[float, Field(gt=0)] = 0.1
    greedy_gap: Annotated[float, Field(ge=0)] = 0.5
    top_k: Annotated[int, Field(ge=1)] = 50
    tail_fraction: Annotated[float, Field(ge=0, le=1)] = 0.1
    min_cosine: Annotated[float, Field(ge=-1, le=1)] = 0.99


class Calibration(_Model):
    """What the tolerances were derived from: the runs compared and the worst seen."""

    runs: list[str] = []
    tokens: Annotated[int, Field(ge=0)] = 0
    observed_logprob_abs_max: Annotated[float, Field(ge=0)] = 0.0
    observed_logprob_abs_mean: Annotated[float, Field(ge=0)] = 0.0
    observed_greedy_gap: Annotated[float, Field(ge=0)] = 0.0
    observed_tail_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    observed_min_cosine: Annotated[float, Field(ge=-1, le=1)] | None = None
    margin: Annotated[float, Field(ge=1)] = 3.0


class ReferenceToken(_Model):
    """One greedy token of a reference output, with the alternatives the model weighed."""

    id: Annotated[int, Field(ge=0)]
    logprob: Annotated[float, Field(le=0)]
    top: list[tuple[Annotated[int, Field(ge=0)], Annotated[float, Field(le=0)]]] = []


class Challenge(_Model):
    """A fixed reference prompt and the model's greedy answer to it.

    Text models: ``prompt`` run as a completion at temperature 0 for ``max_tokens``;
    ``prompt_tokens`` and ``tokens`` are the reference. Embedding models: ``inputs`` and
    their reference ``vectors_b64`` (float32 little-endian).
    """

    prompt: str = ""
    max_tokens: Annotated[int, Field(ge=1, le=4096)] = 16
    prompt_tokens: Annotated[int, Field(ge=0)] = 0
    tokens: list[ReferenceToken] = []
    eos: bool = False
    inputs: list[str] = []
    vectors_b64: list[str] = []


class CatalogModel(_Model):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    weights_sha256: Sha256
    kind: Literal["text", "embedding"]
    tolerances: Tolerances = Tolerances()
    challenges: list[Challenge] = []
    calibration: Calibration = Calibration()


class CatalogFile(_Model):
    version: Literal[1] = 1
    models: list[CatalogModel] = []


class Catalog:
    """Catalog entries by model name; an empty catalog pins nothing."""

    def __init__(self, models: list[CatalogModel] | None = None) -> None:
        self._models = {m.name: m for m in models or []}

    def __len__(self) -> int:
        return len(self._models)

    def get(self, name: str) -> CatalogModel | None:
        return self._models.get(name)

    def models(self) -> list[CatalogModel]:
        return [self._models[n] for n in sorted(self._models)]

    def with_model(self, model: CatalogModel) -> Catalog:
        """A copy with ``model`` added or replacing the entry of the same name."""
        return Catalog([*(m for m in self.models() if m.name != model.name), model])

    @classmethod
    def from_json(cls, text: str) -> Catalog:
        """Parse a catalog file; ValueError saying what is wrong."""
        try:
            parsed = CatalogFile.model_validate(json.loads(text))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ValueError(f"not a Tessera model catalog: {exc}") from exc
        names = [m.name for m in parsed.models]
        if len(names) != len(set(names)):
            raise ValueError("a model name appears twice in the catalog")
        return cls(parsed.models)

    @classmethod
    def load(cls, path: Path) -> Catalog:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"cannot read catalog {path}: {exc}") from exc

    def to_json(self) -> str:
        return CatalogFile(models=self.models()).model_dump_json(indent=2) + "\n"
