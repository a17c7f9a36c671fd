"""Tests for the arXiv taxonomy: names, archives, aliases, legacy codes and error messages."""

from __future__ import annotations

import pickle

import pytest

from paperops.data import taxonomy as tx
from paperops.data.taxonomy import (
    Category,
    UnknownCategoryError,
    all_categories,
    archive_name,
    archive_of,
    canonical,
    display_name,
    is_known,
    label_for,
    lookup,
)

# Every primary category seen in the project's real dev data; all must resolve.
_DEV_DATA_PRIMARY_TEXT = """
cond-mat quant-ph cs.CV cs.CL cs.AI cs.LG gr-qc astro-ph.GA astro-ph.HE hep-th astro-ph.CO eess.AS
math.RT astro-ph.SR cond-mat.mtrl-sci cs.SD astro-ph.EP cs.RO eess.IV cs.GR math-ph astro-ph.IM
cs.CR astro-ph cs.HC physics cs.SE hep-ph eess.SY cs.IR math.AG math.NA math.QA eess.SP math.CO
cs.CY stat.ML math.NT cs.IT physics.chem-ph nucl-th math cs.DC nlin physics.comp-ph
cond-mat.mes-hall cs.CE cond-mat.str-el q-bio.BM cs.NI physics.optics cond-mat.stat-mech math.RA
cs.NE math.OC math.GR cs.DS cs.MA cs cs.MM cond-mat.soft cond-mat.dis-nn cs.AR q-bio.NC cs.SI
math.PR chao-dyn cond-mat.supr-con math.DG cs.GT math.GT math.AP math.AT q-bio.QM math.CT cs.DB
physics.soc-ph hep-ex physics.flu-dyn physics.med-ph math.ST physics.app-ph cond-mat.other math.OA
physics.gen-ph math.SG math.AC math.FA math.DS nucl-ex cs.LO cs.CC math.CA hep-lat math.CV
physics.geo-ph cs.ET cs.FL stat.ME cs.CG math.KT q-bio cs.PL cs.DL physics.bio-ph atom-ph q-fin.ST
physics.data-an q-bio.GN physics.ins-det funct-an physics.plasm-ph physics.ed-ph nlin.PS econ.GN
cs.DM nlin.CD physics.ao-ph cs.PF stat.AP physics.atom-ph q-bio.PE dg-ga solv-int cs.OS nlin.SI
acc-phys stat.CO math.MG physics.class-ph cs.SC cs.OH math.SP math.LO math.GM physics.space-ph
q-bio.CB q-fin.CP q-fin.RM adap-org nlin.AO q-bio.MN patt-sol q-fin.GN physics.acc-ph
physics.atm-clus q-bio.OT chem-ph q-bio.TO math.HO nlin.CG q-bio.SC q-fin.PR physics.hist-ph
alg-geom ao-sci supr-con cond-mat.quant-gas q-alg cs.MS physics.pop-ph q-fin.TR econ.TH stat.OT
cs.SY q-fin.PM
"""
DEV_DATA_PRIMARY_CODES = _DEV_DATA_PRIMARY_TEXT.split()

LEGACY = {
    "chao-dyn": ("nlin.CD", "nlin"),
    "solv-int": ("nlin.SI", "nlin"),
    "patt-sol": ("nlin.PS", "nlin"),
    "adap-org": ("nlin.AO", "nlin"),
    "comp-gas": ("nlin.CG", "nlin"),
    "funct-an": ("math.FA", "math"),
    "alg-geom": ("math.AG", "math"),
    "dg-ga": ("math.DG", "math"),
    "q-alg": ("math.QA", "math"),
    "cmp-lg": ("cs.CL", "cs"),
    "supr-con": ("cond-mat.supr-con", "cond-mat"),
    "mtrl-th": ("cond-mat.mtrl-sci", "cond-mat"),
    "acc-phys": ("physics.acc-ph", "physics"),
    "atom-ph": ("physics.atom-ph", "physics"),
    "chem-ph": ("physics.chem-ph", "physics"),
    "ao-sci": ("physics.ao-ph", "physics"),
    "bayes-an": ("physics.data-an", "physics"),
    "plasm-ph": ("physics.plasm-ph", "physics"),
}

# alias -> (canonical, archive of the canonical side)
ALIASES = {
    "math.MP": ("math-ph", "math-ph"),
    "cs.SY": ("eess.SY", "eess"),
    "stat.TH": ("math.ST", "math"),
    "q-fin.EC": ("econ.GN", "econ"),
    "math.IT": ("cs.IT", "cs"),
    "cs.NA": ("math.NA", "math"),
}

ARCHIVES_WITH_SUBCATEGORIES = [
    "astro-ph", "cond-mat", "nlin", "physics", "math", "cs",
    "q-bio", "q-fin", "stat", "eess", "econ",
]  # fmt: skip
_EESS = "Electrical Engineering and Systems Science"
SINGLE_CATEGORY_ARCHIVES = [
    "gr-qc", "hep-ex", "hep-lat", "hep-ph", "hep-th", "math-ph", "nucl-ex", "nucl-th", "quant-ph",
]  # fmt: skip


def test_dev_data_list_is_the_expected_size() -> None:
    assert len(DEV_DATA_PRIMARY_CODES) == 166
    assert len(set(DEV_DATA_PRIMARY_CODES)) == 166


@pytest.mark.parametrize("code", DEV_DATA_PRIMARY_CODES)
def test_every_dev_data_primary_code_is_known(code: str) -> None:
    assert is_known(code)
    cat = lookup(code)
    assert cat.archive in tx.ARCHIVES
    assert archive_of(code) == cat.archive
    assert display_name(code)


@pytest.mark.parametrize(("old", "expected"), sorted(LEGACY.items()))
def test_legacy_codes_map_to_modern_category_and_archive(
    old: str, expected: tuple[str, str]
) -> None:
    category, archive = expected
    assert is_known(old)
    assert canonical(old) == category
    assert archive_of(old) == archive
    assert lookup(old) == lookup(category)
    assert label_for(old, "category") == category
    assert label_for(old, "archive") == archive


def test_legacy_table_matches_spec() -> None:
    assert {k: v for k, (v, _) in LEGACY.items()} == dict(tx.LEGACY)


@pytest.mark.parametrize(("alias", "expected"), sorted(ALIASES.items()))
def test_aliases_resolve_to_canonical_side(alias: str, expected: tuple[str, str]) -> None:
    target, archive = expected
    assert canonical(alias) == target
    assert canonical(target) == target
    assert archive_of(alias) == archive
    assert lookup(alias) is lookup(target)


def test_alias_table_matches_spec() -> None:
    assert {k: v for k, (v, _) in ALIASES.items()} == dict(tx.ALIASES)


def test_alias_names() -> None:
    assert lookup("cs.SY").name == "Systems and Control"
    assert lookup("math.MP").name == "Mathematical Physics"
    assert lookup("math.MP").group == "Physics"
    assert lookup("stat.TH").name == "Statistics Theory"
    assert lookup("q-fin.EC").name == "General Economics"
    assert lookup("math.IT").name == "Information Theory"
    assert lookup("cs.NA").name == "Numerical Analysis"


@pytest.mark.parametrize("code", ARCHIVES_WITH_SUBCATEGORIES)
def test_archive_level_codes_are_coarse(code: str) -> None:
    cat = lookup(code)
    assert cat.code == code
    assert cat.archive == code
    assert cat.coarse is True
    assert cat.name == cat.archive_name == archive_name(code)
    assert label_for(code, "archive") == code
    assert label_for(code, "category") == code
    assert tx.categories_in(code)


@pytest.mark.parametrize("code", SINGLE_CATEGORY_ARCHIVES)
def test_single_category_archives_are_fine(code: str) -> None:
    cat = lookup(code)
    assert cat.code == code
    assert cat.archive == code
    assert cat.coarse is False
    assert cat.group == "Physics"
    assert tx.categories_in(code) == []


@pytest.mark.parametrize(
    ("code", "name", "archive"),
    [
        ("cs.LG", "Machine Learning", "cs"),
        ("cs.CV", "Computer Vision and Pattern Recognition", "cs"),
        ("cs.CL", "Computation and Language", "cs"),
        ("astro-ph.GA", "Astrophysics of Galaxies", "astro-ph"),
        ("cond-mat.mes-hall", "Mesoscale and Nanoscale Physics", "cond-mat"),
        ("q-fin.ST", "Statistical Finance", "q-fin"),
        ("eess.AS", "Audio and Speech Processing", "eess"),
        ("stat.ML", "Machine Learning", "stat"),
        ("math.AP", "Analysis of PDEs", "math"),
        ("physics.data-an", "Data Analysis, Statistics and Probability", "physics"),
        ("nlin.SI", "Exactly Solvable and Integrable Systems", "nlin"),
        ("q-bio.NC", "Neurons and Cognition", "q-bio"),
        ("econ.EM", "Econometrics", "econ"),
        ("hep-th", "High Energy Physics - Theory", "hep-th"),
        ("quant-ph", "Quantum Physics", "quant-ph"),
        ("gr-qc", "General Relativity and Quantum Cosmology", "gr-qc"),
    ],
)
def test_category_names(code: str, name: str, archive: str) -> None:
    cat = lookup(code)
    assert cat.name == name
    assert cat.archive == archive
    assert cat.code == code


@pytest.mark.parametrize(
    ("archive", "name", "group"),
    [
        ("cs", "Computer Science", "Computer Science"),
        ("cond-mat", "Condensed Matter", "Physics"),
        ("astro-ph", "Astrophysics", "Physics"),
        ("hep-th", "High Energy Physics - Theory", "Physics"),
        ("physics", "Physics", "Physics"),
        ("nlin", "Nonlinear Sciences", "Physics"),
        ("math", "Mathematics", "Mathematics"),
        ("q-bio", "Quantitative Biology", "Quantitative Biology"),
        ("q-fin", "Quantitative Finance", "Quantitative Finance"),
        ("stat", "Statistics", "Statistics"),
        ("eess", _EESS, _EESS),
        ("econ", "Economics", "Economics"),
    ],
)  # fmt: skip
def test_archive_names_and_groups(archive: str, name: str, group: str) -> None:
    assert archive_name(archive) == name
    assert display_name(archive) == name
    assert lookup(archive).group == group
    assert tx.group_of(archive) == group


def test_every_archive_group_is_an_official_group() -> None:
    assert {lookup(a).group for a in tx.all_archives()} == set(tx.GROUPS)


def test_lookup_is_case_sensitive_but_strips_whitespace() -> None:
    assert canonical("  cs.LG\n") == "cs.LG"
    assert is_known("\tcond-mat ")
    assert archive_name(" cs ") == "Computer Science"
    assert not is_known("cs.lg")
    assert not is_known("CS.LG")
    assert not is_known("")
    assert not is_known(None)  # type: ignore[arg-type]


def test_unknown_fine_code_suggests_same_archive() -> None:
    with pytest.raises(UnknownCategoryError) as info:
        lookup("cs.XX")
    message = str(info.value)
    assert "cs.XX" in message
    assert info.value.suggestions
    assert all(s.startswith("cs.") for s in info.value.suggestions)
    assert info.value.suggestions[0] in message


def test_unknown_code_wrong_case_suggests_exact_code_first() -> None:
    with pytest.raises(UnknownCategoryError) as info:
        canonical("cs.lg")
    assert info.value.suggestions[0] == "cs.LG"
    assert "'cs.LG'" in str(info.value)


def test_unknown_legacy_typo_suggests_legacy_code() -> None:
    with pytest.raises(UnknownCategoryError, match="chao-dyn"):
        archive_of("chaodyn")


def test_unknown_category_error_is_value_error_and_pickles() -> None:
    with pytest.raises(ValueError, match="nonsense"):
        lookup("nonsense")
    err = UnknownCategoryError("cs.XX", ["cs.LG"])
    clone = pickle.loads(pickle.dumps(err))
    assert str(clone) == str(err)
    assert clone.suggestions == ["cs.LG"]


def test_archive_name_rejects_non_archives() -> None:
    with pytest.raises(UnknownCategoryError, match="cond-mat"):
        archive_name("cond_mat")
    with pytest.raises(UnknownCategoryError):
        archive_name("cs.LG")
    with pytest.raises(UnknownCategoryError):
        archive_name("chao-dyn")


def test_label_for_levels() -> None:
    assert label_for("cs.LG", "archive") == "cs"
    assert label_for("cs.LG", "category") == "cs.LG"
    assert label_for("cs.SY", "archive") == "eess"
    assert label_for("math.MP", "category") == "math-ph"
    assert label_for(" astro-ph.GA ", "archive") == "astro-ph"


def test_label_for_bad_level_names_allowed_values() -> None:
    with pytest.raises(ValueError, match="archive") as info:
        label_for("cs.LG", "group")
    assert "category" in str(info.value)
    assert "group" in str(info.value)


def test_label_for_unknown_code_raises() -> None:
    with pytest.raises(UnknownCategoryError):
        label_for("cs.XX", "archive")


def test_display_name_for_categories_and_archives() -> None:
    assert display_name("cs.LG") == "Machine Learning"
    assert display_name("cs") == "Computer Science"
    assert display_name("cond-mat") == "Condensed Matter"
    assert display_name("hep-th") == "High Energy Physics - Theory"
    assert display_name("chao-dyn") == "Chaotic Dynamics"
    assert display_name("cs.SY") == "Systems and Control"
    with pytest.raises(UnknownCategoryError):
        display_name("nope")


def test_all_categories_is_canonical_and_complete() -> None:
    cats = all_categories()
    codes = [c.code for c in cats]
    assert len(codes) == len(set(codes))
    assert codes == sorted(codes)
    assert all(isinstance(c, Category) for c in cats)
    assert not set(codes) & set(tx.ALIASES)
    assert not set(codes) & set(tx.LEGACY)
    assert set(tx.ARCHIVES) <= set(codes)
    for cat in cats:
        assert lookup(cat.code) == cat
        assert canonical(cat.code) == cat.code
        assert cat.code == cat.archive or cat.code.startswith(cat.archive + ".")
        assert cat.archive_name == tx.ARCHIVES[cat.archive]
    fine = [c for c in cats if c.code not in tx.ARCHIVES]
    assert len(fine) == 140
    assert len(tx.ARCHIVES) == 20
    # A fresh list each call: callers cannot mutate the table.
    all_categories().clear()
    assert len(all_categories()) == len(cats)


def test_category_is_frozen() -> None:
    cat = lookup("cs.LG")
    with pytest.raises(AttributeError):
        cat.name = "x"  # type: ignore[misc]
