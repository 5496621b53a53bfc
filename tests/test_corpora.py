"""Tests of the corpus adapters on tiny fabricated trees in each corpus' exact layout.

The adapters read only names and tables, so the audio files are zero bytes.
"""

# Test names say what each test checks; helpers are one-liners.
# ruff: noqa: D103

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from annotate.errors import InputError, UsageError
from annotate.labels import ATTITUDES, EMOTIONS
from annotate.training.corpora import (
    CORPORA,
    Corpus,
    attack,
    cremad,
    emodb,
    emovo,
    parse_corpus_arg,
    ravdess,
    read_corpus,
)
from annotate.training.corpora.base import COMMON_COLUMNS


def make_files(root: Path, names: list[str]) -> None:
    """Create empty files (and their folders) under ``root``."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header), *("\t".join(row) for row in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def column(corpus: Corpus, name: str) -> list:
    return corpus.items[name].tolist()


def relative_paths(corpus: Corpus) -> list[str]:
    return [Path(p).relative_to(corpus.root).as_posix() for p in corpus.items["path"]]


def relative_unparsed(corpus: Corpus) -> list[tuple[str, str]]:
    return [(Path(p).relative_to(corpus.root).as_posix(), r) for p, r in corpus.unparsed]


# --- the registry and the command-line argument --------------------------------------


def test_registry_names_the_seven_corpora():
    assert set(CORPORA) == {
        "commonvoice", "cremad", "emodb", "emovo", "ravdess", "attack", "speechocean762",
    }  # fmt: skip


@pytest.mark.parametrize(
    "codes", [emodb.EMOTION_CODES, emovo.EMOTION_CODES, ravdess.EMOTION_CODES,
              cremad.EMOTION_CODES],
)  # fmt: skip
def test_emotion_maps_give_canonical_names(codes):
    assert set(codes.values()) <= set(EMOTIONS)
    assert len(set(codes.values())) == len(codes)


def test_attitude_map_gives_the_four_attitudes():
    assert sorted(attack.ATTITUDE_CODES.values()) == sorted(ATTITUDES)


def test_parse_corpus_arg_splits_name_and_path(tmp_path):
    assert parse_corpus_arg(f"emodb={tmp_path}") == ("emodb", tmp_path)
    assert parse_corpus_arg(f" RAVDESS = {tmp_path} ") == ("ravdess", tmp_path)
    assert parse_corpus_arg("emovo=a=b") == ("emovo", Path("a=b"))
    assert parse_corpus_arg("emovo=~/x") == ("emovo", Path.home() / "x")


def test_parse_corpus_arg_rejects_unknown_name_listing_valid_ones():
    with pytest.raises(UsageError) as error:
        parse_corpus_arg("emodbx=/data")
    assert str(error.value) == (
        "bad corpus 'emodbx', expected one of "
        "[attack, commonvoice, cremad, emodb, emovo, ravdess, speechocean762]"
    )


@pytest.mark.parametrize("text", ["emodb", "/data/emodb", ""])
def test_parse_corpus_arg_rejects_missing_equals(text):
    with pytest.raises(UsageError, match=r"expected NAME=PATH with NAME one of \[attack, "):
        parse_corpus_arg(text)


@pytest.mark.parametrize("text", ["emodb=", "emodb=  "])
def test_parse_corpus_arg_rejects_missing_path(text):
    with pytest.raises(UsageError, match="no folder after '='"):
        parse_corpus_arg(text)


def test_read_corpus_rejects_unknown_name(tmp_path):
    with pytest.raises(UsageError, match=r"bad corpus 'tess', expected one of \[attack, "):
        read_corpus("tess", tmp_path)


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_missing_root_raises_input_error(tmp_path, name):
    with pytest.raises(InputError, match="does not exist") as error:
        read_corpus(name, tmp_path / "absent")
    assert error.value.kind == "missing"


def test_root_that_is_a_file_raises_input_error(tmp_path):
    (tmp_path / "emodb.zip").write_bytes(b"")
    with pytest.raises(InputError, match="is not a folder"):
        read_corpus("emodb", tmp_path / "emodb.zip")


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_folder_without_audio_raises_input_error(tmp_path, name):
    make_files(tmp_path, ["README.txt", "wav/notes.csv"])
    with pytest.raises(InputError, match="no audio files") as error:
        read_corpus(name, tmp_path)
    assert error.value.kind == "empty"


def test_folder_of_another_corpus_raises_and_names_a_reason(tmp_path):
    make_files(tmp_path, ["f1/dis-f1-b1.wav", "f1/gio-f1-b2.wav"])
    with pytest.raises(InputError, match=r"none of its 2 audio files could be labelled.*SSTTTEV"):
        read_corpus("emodb", tmp_path)


# --- EmoDB ------------------------------------------------------------------------------


@pytest.fixture
def emodb_corpus(tmp_path) -> Corpus:
    make_files(
        tmp_path,
        [
            "wav/03a01Fa.wav",
            "wav/08b02Wb.WAV",
            "wav/more/16a05Nc.flac",
            "wav/03a01Xa.wav",
            "wav/01a01Fa.wav",
            "wav/3a01Fa.wav",
            "wav/README.txt",
            "erkennung.csv",
        ],
    )
    return read_corpus("emodb", tmp_path)


def test_emodb_labels_from_file_names(emodb_corpus):
    assert relative_paths(emodb_corpus) == [
        "wav/03a01Fa.wav", "wav/08b02Wb.WAV", "wav/more/16a05Nc.flac",
    ]  # fmt: skip
    assert column(emodb_corpus, "label") == ["happiness", "anger", "neutral"]
    assert column(emodb_corpus, "speaker") == ["emodb:03", "emodb:08", "emodb:16"]
    assert column(emodb_corpus, "gender") == ["m", "f", "f"]
    assert column(emodb_corpus, "text") == ["a01", "b02", "a05"]
    assert column(emodb_corpus, "version") == ["a", "b", "c"]
    assert set(column(emodb_corpus, "language")) == {"de"}
    assert set(column(emodb_corpus, "task")) == {"emotion"}
    assert set(column(emodb_corpus, "corpus")) == {"emodb"}
    assert column(emodb_corpus, "split") == [None, None, None]


def test_emodb_reports_bad_names(emodb_corpus):
    assert relative_unparsed(emodb_corpus) == [
        ("wav/01a01Fa.wav", "unknown speaker '01' in '01a01Fa', expected one of "
                            "[03, 08, 09, 10, 11, 12, 13, 14, 15, 16]"),
        ("wav/03a01Xa.wav", "unknown emotion code 'X' in '03a01Xa', expected one of "
                            "[A, E, F, L, N, T, W]"),
        ("wav/3a01Fa.wav", "'3a01Fa' does not fit SSTTTEV (speaker 2 digits, text like "
                           "'a01', emotion letter, version letter), e.g. '03a01Fa'"),
    ]  # fmt: skip


def test_items_have_common_columns_and_only_strings_or_none(emodb_corpus):
    items = emodb_corpus.items
    assert list(items.columns[: len(COMMON_COLUMNS)]) == list(COMMON_COLUMNS)
    for value in items.to_numpy().ravel():
        assert value is None or isinstance(value, str)
    assert items["path"].tolist() == sorted(items["path"])
    assert all(os.path.isabs(p) for p in items["path"])


def test_summary_counts_and_is_json_serialisable(emodb_corpus):
    summary = emodb_corpus.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["corpus"] == "emodb"
    assert summary["root"] == str(emodb_corpus.root)
    assert summary["files"] == 3
    assert summary["speakers"] == 3
    assert summary["labels"] == {"anger": 1, "happiness": 1, "neutral": 1}
    assert summary["per_speaker"] == {"emodb:03": 1, "emodb:08": 1, "emodb:16": 1}
    assert [u["path"] for u in summary["unparsed"]] == [p for p, _ in emodb_corpus.unparsed]
    assert summary["unparsed"][1]["reason"].startswith("unknown emotion code 'X'")


# --- EMOVO ------------------------------------------------------------------------------


def test_emovo_labels_and_bad_names(tmp_path):
    make_files(
        tmp_path,
        [
            "f1/dis-f1-b1.wav",
            "m3/sor-m3-n5.FLAC",
            "m1/pau-m1-l4.wav",
            "f1/xyz-f1-b1.wav",
            "f2/dis-f4-b1.wav",
            "f2/dis-f2-b9.wav",
            "f2/dis-f2.wav",
            "f2/notes.txt",
        ],
    )
    corpus = read_corpus("emovo", tmp_path)
    assert relative_paths(corpus) == ["f1/dis-f1-b1.wav", "m1/pau-m1-l4.wav", "m3/sor-m3-n5.FLAC"]
    assert column(corpus, "label") == ["disgust", "fear", "surprise"]
    assert column(corpus, "speaker") == ["emovo:f1", "emovo:m1", "emovo:m3"]
    assert column(corpus, "gender") == ["f", "m", "m"]
    assert column(corpus, "sentence") == ["b1", "l4", "n5"]
    assert set(column(corpus, "language")) == {"it"}
    assert relative_unparsed(corpus) == [
        ("f1/xyz-f1-b1.wav", "unknown emotion code 'xyz' in 'xyz-f1-b1', expected one of "
                             "[dis, gio, neu, pau, rab, sor, tri]"),
        ("f2/dis-f2-b9.wav", "unknown sentence 'b9' in 'dis-f2-b9', expected one of "
                             "[b1, b2, b3, d1, d2, l1, l2, l3, l4, n1, n2, n3, n4, n5]"),
        ("f2/dis-f2.wav", "'dis-f2' has 2 '-'-separated fields, expected 3: "
                          "emotion-speaker-sentence, e.g. 'dis-f1-b1'"),
        ("f2/dis-f4-b1.wav", "unknown speaker 'f4' in 'dis-f4-b1', expected one of "
                             "[f1, f2, f3, m1, m2, m3]"),
    ]  # fmt: skip


# --- RAVDESS ----------------------------------------------------------------------------


def test_ravdess_labels_and_bad_names(tmp_path):
    make_files(
        tmp_path,
        [
            "Actor_01/03-01-05-02-01-01-01.wav",
            "Actor_02/01-01-02-01-02-02-02.WAV",
            "Actor_02/03-01-08-01-01-02-02.flac",
            "Actor_01/03-02-05-02-01-01-01.wav",
            "Actor_01/03-01-09-01-01-01-01.wav",
            "Actor_01/03-01-05-01-01-01.wav",
            "Actor_25/03-01-05-01-01-01-25.wav",
            "Actor_01/.DS_Store",
        ],
    )
    corpus = read_corpus("ravdess", tmp_path)
    assert relative_paths(corpus) == [
        "Actor_01/03-01-05-02-01-01-01.wav",
        "Actor_02/01-01-02-01-02-02-02.WAV",
        "Actor_02/03-01-08-01-01-02-02.flac",
    ]
    assert column(corpus, "label") == ["anger", "calm", "surprise"]
    assert column(corpus, "speaker") == ["ravdess:01", "ravdess:02", "ravdess:02"]
    assert column(corpus, "gender") == ["m", "f", "f"]
    assert column(corpus, "intensity") == ["strong", "normal", "normal"]
    assert column(corpus, "statement") == ["01", "02", "01"]
    assert column(corpus, "repetition") == ["01", "02", "02"]
    assert column(corpus, "modality") == ["audio-only", "audio-video", "audio-only"]
    assert set(column(corpus, "language")) == {"en"}
    assert relative_unparsed(corpus) == [
        ("Actor_01/03-01-05-01-01-01.wav", "'03-01-05-01-01-01' has 6 '-'-separated fields, "
         "expected 7: modality-channel-emotion-intensity-statement-repetition-actor, "
         "e.g. '03-01-05-02-01-01-01'"),
        ("Actor_01/03-01-09-01-01-01-01.wav", "unknown emotion code '09' in "
         "'03-01-09-01-01-01-01', expected one of [01, 02, 03, 04, 05, 06, 07, 08]"),
        ("Actor_01/03-02-05-02-01-01-01.wav",
         "song, not speech (vocal channel '02' in '03-02-05-02-01-01-01')"),
        ("Actor_25/03-01-05-01-01-01-25.wav", "unknown actor '25' in '03-01-05-01-01-01-25', "
         "expected one of [" + ", ".join(f"{n:02d}" for n in range(1, 25)) + "]"),
    ]  # fmt: skip


# --- CREMA-D ----------------------------------------------------------------------------

CREMAD_NAMES = [
    "AudioWAV/1001_DFA_ANG_XX.wav",
    "AudioWAV/1002_IEO_HAP_HI.WAV",
    "AudioWAV/1091_TSI_NEU_LO.wav",
    "AudioWAV/1001_DFA_XXX_XX.wav",
    "AudioWAV/1001_ABC_ANG_XX.wav",
    "AudioWAV/1001_DFA_ANG.wav",
    "AudioWAV/101_DFA_ANG_XX.wav",
    "AudioWAV/1001_DFA_ANG_ZZ.wav",
    "finishedResponses.csv",
]


def test_cremad_labels_and_bad_names_without_demographics(tmp_path):
    make_files(tmp_path, CREMAD_NAMES)
    corpus = read_corpus("cremad", tmp_path)
    assert relative_paths(corpus) == [
        "AudioWAV/1001_DFA_ANG_XX.wav", "AudioWAV/1002_IEO_HAP_HI.WAV",
        "AudioWAV/1091_TSI_NEU_LO.wav",
    ]  # fmt: skip
    assert column(corpus, "label") == ["anger", "happiness", "neutral"]
    assert column(corpus, "speaker") == ["cremad:1001", "cremad:1002", "cremad:1091"]
    assert column(corpus, "gender") == [None, None, None]
    assert column(corpus, "sentence") == ["DFA", "IEO", "TSI"]
    assert column(corpus, "text")[0] == "Don't forget a jacket"
    assert column(corpus, "level") == ["unspecified", "high", "low"]
    assert set(column(corpus, "language")) == {"en"}
    assert relative_unparsed(corpus) == [
        ("AudioWAV/1001_ABC_ANG_XX.wav", "unknown sentence code 'ABC' in '1001_ABC_ANG_XX', "
         "expected one of [DFA, IEO, IOM, ITH, ITS, IWL, IWW, MTI, TAI, TIE, TSI, WSI]"),
        ("AudioWAV/1001_DFA_ANG.wav", "'1001_DFA_ANG' has 3 '_'-separated fields, expected 4: "
         "actor_sentence_emotion_level, e.g. '1001_DFA_ANG_XX'"),
        ("AudioWAV/1001_DFA_ANG_ZZ.wav", "unknown level 'ZZ' in '1001_DFA_ANG_ZZ', "
         "expected one of [HI, LO, MD, XX]"),
        ("AudioWAV/1001_DFA_XXX_XX.wav", "unknown emotion code 'XXX' in '1001_DFA_XXX_XX', "
         "expected one of [ANG, DIS, FEA, HAP, NEU, SAD]"),
        ("AudioWAV/101_DFA_ANG_XX.wav",
         "bad actor '101' in '101_DFA_ANG_XX', expected 4 digits like '1001'"),
    ]  # fmt: skip


def test_cremad_takes_gender_from_demographics_anywhere_under_root(tmp_path):
    make_files(tmp_path, CREMAD_NAMES)
    demographics = tmp_path / "data" / "VideoDemographics.csv"
    demographics.parent.mkdir()
    demographics.write_text(
        "ActorID,Age,Sex,Race,Ethnicity\n"
        "1001,51,Male,Caucasian,Not Hispanic\n"
        "1002,21,Female,Caucasian,Not Hispanic\n"
    )
    corpus = read_corpus("cremad", tmp_path)
    assert column(corpus, "gender") == ["m", "f", None]
    assert column(corpus, "age") == ["51", "21", None]


def test_cremad_rejects_demographics_without_sex(tmp_path):
    make_files(tmp_path, CREMAD_NAMES)
    (tmp_path / "VideoDemographics.csv").write_text("ActorID,Age\n1001,51\n")
    with pytest.raises(InputError, match=r"lacks column\(s\) \['Sex'\]"):
        read_corpus("cremad", tmp_path)


# --- Att-HACK ---------------------------------------------------------------------------


def test_attack_labels_and_bad_names(tmp_path):
    make_files(
        tmp_path,
        [
            "wav/F01_a1_s001_v01.wav",
            "wav/M03_a4_s100_v02.Wav",
            "wav/F02_a2_s005_v03.wav",
            "wav/F01_a5_s001_v01.wav",
            "wav/X01_a1_s001_v01.wav",
            "wav/F01_a1_s001.wav",
            "wav/F01_a1_001_v01.wav",
            "wav/F01_a1_s001_v1.wav",
            "txt/F01_a1_s001_v01.txt",
        ],
    )
    corpus = read_corpus("attack", tmp_path)
    assert relative_paths(corpus) == [
        "wav/F01_a1_s001_v01.wav", "wav/F02_a2_s005_v03.wav", "wav/M03_a4_s100_v02.Wav",
    ]  # fmt: skip
    assert column(corpus, "label") == ["friendly", "distant", "seductive"]
    assert column(corpus, "speaker") == ["attack:F01", "attack:F02", "attack:M03"]
    assert column(corpus, "gender") == ["f", "f", "m"]
    assert column(corpus, "sentence") == ["s001", "s005", "s100"]
    assert column(corpus, "version") == ["v01", "v03", "v02"]
    assert set(column(corpus, "task")) == {"attitude"}
    assert set(column(corpus, "language")) == {"fr"}
    assert relative_unparsed(corpus) == [
        ("wav/F01_a1_001_v01.wav", "bad sentence '001' in 'F01_a1_001_v01', "
                                   "expected s + 3 digits"),
        ("wav/F01_a1_s001.wav", "'F01_a1_s001' has 3 '_'-separated fields, expected 4: "
                                "speaker_attitude_sentence_version, e.g. 'F01_a1_s001_v01'"),
        ("wav/F01_a1_s001_v1.wav", "bad version 'v1' in 'F01_a1_s001_v1', "
                                   "expected v + 2 digits"),
        ("wav/F01_a5_s001_v01.wav", "unknown attitude code 'a5' in 'F01_a5_s001_v01', "
                                    "expected one of [a1, a2, a3, a4]"),
        ("wav/X01_a1_s001_v01.wav", "bad speaker 'X01' in 'X01_a1_s001_v01', "
                                    "expected F or M + 2 digits"),
    ]  # fmt: skip


# --- Common Voice -----------------------------------------------------------------------

CV61_HEADER = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender",
               "accent", "locale", "segment"]  # fmt: skip
CV13_HEADER = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes",
               "down_votes", "age", "gender", "accents", "variant", "locale",
               "segment"]  # fmt: skip
CV_OLD_HEADER = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender",
                 "accent"]  # fmt: skip


def cv61_row(client: str, clip: str, sentence: str = "Hello.") -> list[str]:
    return [client, clip, sentence, "2", "0", "twenties", "male", "england", "en", ""]


def make_cv61_locale(folder: Path) -> None:
    """An English locale in the 6.1 layout, with official splits."""
    make_files(folder / "clips", [f"common_voice_en_{n}.mp3" for n in (1, 2, 3, 4, 5, 7)])
    make_files(folder / "clips", ["common_voice_en_6.MP3", "readme.txt"])
    validated = [
        cv61_row("aa", "common_voice_en_1.mp3", 'He said "hi and left.'),
        cv61_row("aa", "common_voice_en_2.mp3"),
        cv61_row("bb", "common_voice_en_3.mp3"),
        cv61_row("cc", "common_voice_en_4.mp3"),
        cv61_row("dd", "common_voice_en_9.mp3"),
    ]
    write_tsv(folder / "validated.tsv", CV61_HEADER, validated)
    write_tsv(folder / "train.tsv", CV61_HEADER, validated[:2])
    write_tsv(folder / "dev.tsv", CV61_HEADER, validated[2:3])
    write_tsv(folder / "test.tsv", CV61_HEADER, [])
    write_tsv(folder / "other.tsv", CV61_HEADER, [cv61_row("ee", "common_voice_en_5.mp3")])
    write_tsv(folder / "reported.tsv", ["sentence", "locale", "reason"], [["x", "en", "y"]])


def test_commonvoice_locale_folder_with_splits(tmp_path):
    make_cv61_locale(tmp_path / "en")
    corpus = read_corpus("commonvoice", tmp_path / "en")
    assert corpus.root == tmp_path / "en"
    assert relative_paths(corpus) == [f"clips/common_voice_en_{n}.mp3" for n in (1, 2, 3, 4)]
    assert column(corpus, "speaker") == [
        "commonvoice:aa", "commonvoice:aa", "commonvoice:bb", "commonvoice:cc",
    ]  # fmt: skip
    assert column(corpus, "split") == ["train", "train", "dev", None]
    assert set(column(corpus, "label")) == {"en"}
    assert set(column(corpus, "language")) == {"en"}
    assert set(column(corpus, "task")) == {"language"}
    assert set(column(corpus, "gender")) == {"m"}
    assert set(column(corpus, "accents")) == {"england"}
    assert column(corpus, "sentence")[0] == 'He said "hi and left.'
    assert column(corpus, "up_votes")[0] == "2"
    assert column(corpus, "segment")[0] is None
    assert relative_unparsed(corpus) == [
        ("clips/common_voice_en_5.mp3", "listed only in other.tsv (not validated)"),
        ("clips/common_voice_en_6.MP3", "not listed in any TSV"),
        ("clips/common_voice_en_7.mp3", "not listed in any TSV"),
        ("clips/common_voice_en_9.mp3", "listed in validated.tsv but missing"),
    ]


def test_commonvoice_parent_folder_reads_each_release_layout(tmp_path):
    make_cv61_locale(tmp_path / "en")
    make_files(tmp_path / "fr" / "clips", ["common_voice_fr_1.mp3", "common_voice_fr_2.mp3"])
    write_tsv(
        tmp_path / "fr" / "validated.tsv",
        CV13_HEADER,
        [
            ["ff", "common_voice_fr_1.mp3", "s1", "Il a dit « oui\" .", "", "3", "1", "thirties",
             "female_feminine", "France", "", "fr-FR", ""],
            ["gg", "common_voice_fr_2.mp3", "s2", "Non.", "general", "2", "0", "", "other",
             "", "", "fr", ""],
        ],
    )  # fmt: skip
    make_files(tmp_path / "de" / "clips", ["common_voice_de_1.mp3"])
    write_tsv(
        tmp_path / "de" / "validated.tsv",
        CV_OLD_HEADER,
        [["hh", "common_voice_de_1.mp3", "Hallo.", "1", "0", "", "", ""]],
    )
    make_files(tmp_path / "it" / "clips_unlabelled_speakers", ["common_voice_it_1.mp3"])
    make_files(tmp_path, ["stray.wav", "LICENSE"])

    corpus = read_corpus("commonvoice", tmp_path)
    items = corpus.items.set_index(corpus.items["path"].map(lambda p: Path(p).name))
    assert sorted(items.index) == [
        "common_voice_de_1.mp3", "common_voice_en_1.mp3", "common_voice_en_2.mp3",
        "common_voice_en_3.mp3", "common_voice_en_4.mp3", "common_voice_fr_1.mp3",
        "common_voice_fr_2.mp3",
    ]  # fmt: skip
    assert items.loc["common_voice_de_1.mp3", "language"] == "de"
    assert items.loc["common_voice_de_1.mp3", "locale"] == "de"
    assert items.loc["common_voice_de_1.mp3", "gender"] is None
    fr1 = items.loc["common_voice_fr_1.mp3"]
    assert (fr1["label"], fr1["language"], fr1["locale"]) == ("fr", "fr", "fr-FR")
    assert (fr1["gender"], fr1["gender_reported"]) == ("f", "female_feminine")
    assert (fr1["sentence_id"], fr1["sentence"]) == ("s1", 'Il a dit « oui" .')
    assert fr1["accents"] == "France"
    assert items.loc["common_voice_fr_2.mp3", "gender"] is None
    assert items.loc["common_voice_fr_2.mp3", "sentence_domain"] == "general"
    assert corpus.summary()["labels"] == {"de": 1, "en": 4, "fr": 2}
    assert corpus.summary()["speakers"] == 6
    reasons = dict(relative_unparsed(corpus))
    assert reasons["it/clips_unlabelled_speakers/common_voice_it_1.mp3"] == (
        "not listed in any TSV"
    )
    assert reasons["stray.wav"] == "not inside a locale folder"
    assert len(reasons) == 6


def test_commonvoice_clips_without_any_tsv_raise_input_error(tmp_path):
    make_files(tmp_path / "de" / "clips_unlabelled_speakers", ["common_voice_de_1.mp3"])
    with pytest.raises(InputError, match="not listed in any TSV"):
        read_corpus("commonvoice", tmp_path / "de")


def test_commonvoice_rejects_tsv_without_path_column(tmp_path):
    make_files(tmp_path / "clips", ["common_voice_en_1.mp3"])
    write_tsv(tmp_path / "validated.tsv", ["client_id", "file"], [["aa", "x.mp3"]])
    with pytest.raises(InputError, match=r"lacks column\(s\) \[path\]"):
        read_corpus("commonvoice", tmp_path)


# --- manifests --------------------------------------------------------------------------


def test_manifest_inside_root_has_relative_paths_resolving_to_the_audio(emodb_corpus):
    manifest = emodb_corpus.to_manifest(emodb_corpus.root / "manifest.parquet")
    table = pd.read_parquet(manifest)
    assert list(table.columns[:4]) == ["path", "speaker", "language", "label"]
    assert sorted(table.columns) == sorted(emodb_corpus.items.columns)
    assert table["path"].tolist() == ["wav/03a01Fa.wav", "wav/08b02Wb.WAV",
                                      "wav/more/16a05Nc.flac"]  # fmt: skip
    resolved = [str(manifest.parent / p) for p in table["path"]]
    assert resolved == emodb_corpus.items["path"].tolist()
    assert all(Path(p).is_file() for p in resolved)
    # Parquet gives back pandas' string dtype (NaN for missing); compare the values.
    expected = emodb_corpus.items.drop(columns="path")
    read_back = table[expected.columns].astype(object)
    read_back = read_back.where(read_back.notna(), None)
    pd.testing.assert_frame_equal(read_back, expected)


def test_manifest_outside_root_keeps_absolute_paths(emodb_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("elsewhere")
    manifest = emodb_corpus.to_manifest(folder / "sub" / "emodb.parquet")
    assert manifest == folder / "sub" / "emodb.parquet"
    table = pd.read_parquet(manifest)
    assert table["path"].tolist() == emodb_corpus.items["path"].tolist()
    assert not list(folder.glob("sub/*.partial"))
