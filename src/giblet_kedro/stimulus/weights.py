"""Pretrained weights for the feature extractors, found offline where people keep them.

``stimulus.audio.weights`` (EnCodec 24 kHz) and ``stimulus.text.weights`` (open_clip)
accept:

- ``random``: the real architecture with random, seeded weights (the explicit opt-in;
  every report says so);
- a local file (a state dict; relative paths resolve against ``data/01_raw/``);
- ``null`` for EnCodec: the torch hub cache, where ``encodec`` itself puts the
  checkpoint: ``$TORCH_HOME/hub/checkpoints/encodec_24khz-d7cc33bc.th``
  (``TORCH_HOME`` defaults to ``~/.cache/torch``);
- an open_clip pretrained tag for CLIP (``laion2b_s34b_b79k``, ``openai``, ...): the
  Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``), where open_clip downloads it, read
  offline.

Nothing is downloaded: a missing file is reported with where it was looked for and the
exact file to fetch. A spec without ``demo:`` may not leave weights unresolved.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

RANDOM = "random"
ENCODEC_FILE = "encodec_24khz-d7cc33bc.th"
ENCODEC_URL = f"https://dl.fbaipublicfiles.com/encodec/v0/{ENCODEC_FILE}"
# open_clip's file names in a Hugging Face repository, safetensors first (as open_clip).
CLIP_HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class WeightsLookup:
    """Where one extractor's weights were looked for and what was found."""

    key: str                      # the spec key, e.g. "stimulus.audio.weights"
    model: str                    # e.g. "EnCodec 24 kHz" or "open_clip ViT-B-32"
    requested: str | None         # the spec's value
    looked: list[str] = field(default_factory=list)
    found: str | None = None      # an absolute file, or RANDOM
    fetch: str = ""               # how to get the file when it is missing

    @property
    def is_random(self) -> bool:
        return self.found == RANDOM

    def missing_message(self) -> str:
        looked = "; ".join(self.looked) or "nowhere"
        written = "null" if self.requested is None else repr(self.requested)
        return (f"{self.key} = {written}: no {self.model} weights found (looked in: {looked}). "
                f"{self.fetch} Or write `{self.key.rsplit('.', 1)[-1]}: random` to use random weights on "
                "purpose (features then mean nothing; every report says so). "
                "`kedro giblet weights` lists what each model needs.")


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def torch_hub_checkpoints() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch's own rule for its hub cache)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def find_encodec(requested: str | None, resolved_file: Path | None) -> WeightsLookup:
    """EnCodec 24 kHz: ``random``, a file (``resolved_file``, already made absolute), or
    ``null``: the torch hub cache."""
    lookup = dict(key="stimulus.audio.weights", model="EnCodec 24 kHz", requested=requested)
    if requested == RANDOM:
        return WeightsLookup(**lookup, found=RANDOM)
    if requested is not None:
        assert resolved_file is not None
        return WeightsLookup(**lookup, looked=[str(resolved_file)],
                             found=str(resolved_file) if resolved_file.is_file() else None,
                             fetch=f"Put the EnCodec 24 kHz state dict at {resolved_file} ({ENCODEC_URL}).")
    cached = torch_hub_checkpoints() / ENCODEC_FILE
    return WeightsLookup(**lookup, looked=[str(cached)], found=str(cached) if cached.is_file() else None,
                         fetch=f"Fetch {ENCODEC_URL} on a machine with internet and copy it to {cached} "
                               "(or set TORCH_HOME to the folder whose hub/checkpoints/ holds it).")


def clip_hf_source(model_name: str, tag: str) -> tuple[str | None, tuple[str, ...]]:
    """``(repository, file names)`` open_clip downloads ``model_name``/``tag`` from on the
    Hugging Face hub (``hf_hub: org/name/`` means its default file names)."""
    import open_clip

    hub = (open_clip.get_pretrained_cfg(model_name, tag) or {}).get("hf_hub", "")
    if not hub:
        return None, ()
    repo, _, filename = hub.rpartition("/")
    return repo, (filename,) if filename else CLIP_HF_FILES


def find_clip(model_name: str, requested: str | None, resolved_file: Path | None) -> WeightsLookup:
    """open_clip: ``random``, a pretrained tag (from the Hugging Face cache), or a file."""
    lookup = dict(key="stimulus.text.weights", model=f"open_clip {model_name}", requested=requested)
    if requested == RANDOM:
        return WeightsLookup(**lookup, found=RANDOM)
    import open_clip  # slow to import: only when weights are to be found
    from huggingface_hub import constants

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if requested is None:
        cached = [t for t in tags if _cached_clip_file(model_name, t)]
        return WeightsLookup(**lookup, looked=[f"{constants.HF_HUB_CACHE} (tags cached: {cached or 'none'})"],
                             fetch=f"Name the pretrained weights: a tag of {model_name} ({', '.join(tags) or 'none'}; "
                                   f"cached here: {cached or 'none'}) or a local file.")
    if requested in tags:
        repo, files = clip_hf_source(model_name, requested)
        return WeightsLookup(**lookup, looked=[f"{constants.HF_HUB_CACHE}: {repo} ({' or '.join(files)})"],
                             found=_cached_clip_file(model_name, requested),
                             fetch=f"On a machine with internet run `hf download {repo} {files[-1]}` and copy "
                                   f"its cache folder models--{str(repo).replace('/', '--')} into "
                                   f"{constants.HF_HUB_CACHE} (or set HF_HOME to the folder holding hub/).")
    assert resolved_file is not None
    fetch = f"Put the {model_name} checkpoint at {resolved_file}, or name one of its pretrained tags: {', '.join(tags)}."
    return WeightsLookup(**lookup, looked=[str(resolved_file)],
                         found=str(resolved_file) if resolved_file.is_file() else None, fetch=fetch)


def _cached_clip_file(model_name: str, tag: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    repo, files = clip_hf_source(model_name, tag)
    for filename in files if repo else ():
        hit = try_to_load_from_cache(repo, filename)
        if isinstance(hit, str):
            return hit
    return None


def is_tag(model_name: str, value: str | None) -> bool:
    """Whether a text ``weights`` value names an open_clip pretrained tag (not a file)."""
    if value in (None, RANDOM):
        return False
    import open_clip

    return value in open_clip.list_pretrained_tags_by_model(model_name)


def describe_weights(weights: str | None, random_text: str) -> str:
    """What a cache's metadata and the reports say about an extractor's weights."""
    if weights in (None, RANDOM):
        return f"RANDOM weights: {random_text} (features carry no pretrained knowledge)"
    try:
        return f"{weights} (sha256 {sha256(weights)[:16]})"
    except OSError:
        return str(weights)
