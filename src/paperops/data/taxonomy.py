"""The arXiv category taxonomy: codes, human names, archives and legacy aliases.

Papers are labelled either by fine category ("cs.LG") or by archive ("cs"), and real data mixes
modern codes with legacy archives ("chao-dyn") and official aliases ("cs.SY" = "eess.SY"). This
module resolves all of them to one canonical code so that labels never split one subject in two.
The tables follow https://arxiv.org/category_taxonomy and are indexed once at import so that a
lookup costs one dict get (the pipeline calls it ~100k times).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = [
    "ALIASES",
    "ARCHIVES",
    "GROUPS",
    "LABEL_LEVELS",
    "LEGACY",
    "Category",
    "UnknownCategoryError",
    "all_archives",
    "all_categories",
    "archive_name",
    "archive_of",
    "canonical",
    "categories_in",
    "display_name",
    "group_of",
    "is_archive",
    "is_known",
    "label_for",
    "lookup",
]

# --- Groups -------------------------------------------------------------------------------------

PHYSICS: Final = "Physics"
MATHEMATICS: Final = "Mathematics"
COMPUTER_SCIENCE: Final = "Computer Science"
QUANT_BIO: Final = "Quantitative Biology"
QUANT_FIN: Final = "Quantitative Finance"
STATISTICS: Final = "Statistics"
EESS: Final = "Electrical Engineering and Systems Science"
ECONOMICS: Final = "Economics"

GROUPS: Final[tuple[str, ...]] = (
    PHYSICS,
    MATHEMATICS,
    COMPUTER_SCIENCE,
    QUANT_BIO,
    QUANT_FIN,
    STATISTICS,
    EESS,
    ECONOMICS,
)

# --- Archives: code -> (name, group) --------------------------------------------------------------

_ARCHIVES: Final[dict[str, tuple[str, str]]] = {
    "astro-ph": ("Astrophysics", PHYSICS),
    "cond-mat": ("Condensed Matter", PHYSICS),
    "gr-qc": ("General Relativity and Quantum Cosmology", PHYSICS),
    "hep-ex": ("High Energy Physics - Experiment", PHYSICS),
    "hep-lat": ("High Energy Physics - Lattice", PHYSICS),
    "hep-ph": ("High Energy Physics - Phenomenology", PHYSICS),
    "hep-th": ("High Energy Physics - Theory", PHYSICS),
    "math-ph": ("Mathematical Physics", PHYSICS),
    "nlin": ("Nonlinear Sciences", PHYSICS),
    "nucl-ex": ("Nuclear Experiment", PHYSICS),
    "nucl-th": ("Nuclear Theory", PHYSICS),
    "physics": ("Physics", PHYSICS),
    "quant-ph": ("Quantum Physics", PHYSICS),
    "math": ("Mathematics", MATHEMATICS),
    "cs": ("Computer Science", COMPUTER_SCIENCE),
    "q-bio": ("Quantitative Biology", QUANT_BIO),
    "q-fin": ("Quantitative Finance", QUANT_FIN),
    "stat": ("Statistics", STATISTICS),
    "eess": ("Electrical Engineering and Systems Science", EESS),
    "econ": ("Economics", ECONOMICS),
}

# --- Fine categories: code -> name (the archive is the part before the dot) ----------------------
# Alias codes (e.g. "cs.SY") are not listed here; they live in _ALIASES below.

_FINE: Final[dict[str, str]] = {
    # Astrophysics
    "astro-ph.CO": "Cosmology and Nongalactic Astrophysics",
    "astro-ph.EP": "Earth and Planetary Astrophysics",
    "astro-ph.GA": "Astrophysics of Galaxies",
    "astro-ph.HE": "High Energy Astrophysical Phenomena",
    "astro-ph.IM": "Instrumentation and Methods for Astrophysics",
    "astro-ph.SR": "Solar and Stellar Astrophysics",
    # Condensed Matter
    "cond-mat.dis-nn": "Disordered Systems and Neural Networks",
    "cond-mat.mes-hall": "Mesoscale and Nanoscale Physics",
    "cond-mat.mtrl-sci": "Materials Science",
    "cond-mat.other": "Other Condensed Matter",
    "cond-mat.quant-gas": "Quantum Gases",
    "cond-mat.soft": "Soft Condensed Matter",
    "cond-mat.stat-mech": "Statistical Mechanics",
    "cond-mat.str-el": "Strongly Correlated Electrons",
    "cond-mat.supr-con": "Superconductivity",
    # Nonlinear Sciences
    "nlin.AO": "Adaptation and Self-Organizing Systems",
    "nlin.CD": "Chaotic Dynamics",
    "nlin.CG": "Cellular Automata and Lattice Gases",
    "nlin.PS": "Pattern Formation and Solitons",
    "nlin.SI": "Exactly Solvable and Integrable Systems",
    # Physics
    "physics.acc-ph": "Accelerator Physics",
    "physics.ao-ph": "Atmospheric and Oceanic Physics",
    "physics.app-ph": "Applied Physics",
    "physics.atm-clus": "Atomic and Molecular Clusters",
    "physics.atom-ph": "Atomic Physics",
    "physics.bio-ph": "Biological Physics",
    "physics.chem-ph": "Chemical Physics",
    "physics.class-ph": "Classical Physics",
    "physics.comp-ph": "Computational Physics",
    "physics.data-an": "Data Analysis, Statistics and Probability",
    "physics.ed-ph": "Physics Education",
    "physics.flu-dyn": "Fluid Dynamics",
    "physics.gen-ph": "General Physics",
    "physics.geo-ph": "Geophysics",
    "physics.hist-ph": "History and Philosophy of Physics",
    "physics.ins-det": "Instrumentation and Detectors",
    "physics.med-ph": "Medical Physics",
    "physics.optics": "Optics",
    "physics.plasm-ph": "Plasma Physics",
    "physics.pop-ph": "Popular Physics",
    "physics.soc-ph": "Physics and Society",
    "physics.space-ph": "Space Physics",
    # Mathematics
    "math.AC": "Commutative Algebra",
    "math.AG": "Algebraic Geometry",
    "math.AP": "Analysis of PDEs",
    "math.AT": "Algebraic Topology",
    "math.CA": "Classical Analysis and ODEs",
    "math.CO": "Combinatorics",
    "math.CT": "Category Theory",
    "math.CV": "Complex Variables",
    "math.DG": "Differential Geometry",
    "math.DS": "Dynamical Systems",
    "math.FA": "Functional Analysis",
    "math.GM": "General Mathematics",
    "math.GN": "General Topology",
    "math.GR": "Group Theory",
    "math.GT": "Geometric Topology",
    "math.HO": "History and Overview",
    "math.KT": "K-Theory and Homology",
    "math.LO": "Logic",
    "math.MG": "Metric Geometry",
    "math.NA": "Numerical Analysis",
    "math.NT": "Number Theory",
    "math.OA": "Operator Algebras",
    "math.OC": "Optimization and Control",
    "math.PR": "Probability",
    "math.QA": "Quantum Algebra",
    "math.RA": "Rings and Algebras",
    "math.RT": "Representation Theory",
    "math.SG": "Symplectic Geometry",
    "math.SP": "Spectral Theory",
    "math.ST": "Statistics Theory",
    # Computer Science
    "cs.AI": "Artificial Intelligence",
    "cs.AR": "Hardware Architecture",
    "cs.CC": "Computational Complexity",
    "cs.CE": "Computational Engineering, Finance, and Science",
    "cs.CG": "Computational Geometry",
    "cs.CL": "Computation and Language",
    "cs.CR": "Cryptography and Security",
    "cs.CV": "Computer Vision and Pattern Recognition",
    "cs.CY": "Computers and Society",
    "cs.DB": "Databases",
    "cs.DC": "Distributed, Parallel, and Cluster Computing",
    "cs.DL": "Digital Libraries",
    "cs.DM": "Discrete Mathematics",
    "cs.DS": "Data Structures and Algorithms",
    "cs.ET": "Emerging Technologies",
    "cs.FL": "Formal Languages and Automata Theory",
    "cs.GL": "General Literature",
    "cs.GR": "Graphics",
    "cs.GT": "Computer Science and Game Theory",
    "cs.HC": "Human-Computer Interaction",
    "cs.IR": "Information Retrieval",
    "cs.IT": "Information Theory",
    "cs.LG": "Machine Learning",
    "cs.LO": "Logic in Computer Science",
    "cs.MA": "Multiagent Systems",
    "cs.MM": "Multimedia",
    "cs.MS": "Mathematical Software",
    "cs.NE": "Neural and Evolutionary Computing",
    "cs.NI": "Networking and Internet Architecture",
    "cs.OH": "Other Computer Science",
    "cs.OS": "Operating Systems",
    "cs.PF": "Performance",
    "cs.PL": "Programming Languages",
    "cs.RO": "Robotics",
    "cs.SC": "Symbolic Computation",
    "cs.SD": "Sound",
    "cs.SE": "Software Engineering",
    "cs.SI": "Social and Information Networks",
    # Quantitative Biology
    "q-bio.BM": "Biomolecules",
    "q-bio.CB": "Cell Behavior",
    "q-bio.GN": "Genomics",
    "q-bio.MN": "Molecular Networks",
    "q-bio.NC": "Neurons and Cognition",
    "q-bio.OT": "Other Quantitative Biology",
    "q-bio.PE": "Populations and Evolution",
    "q-bio.QM": "Quantitative Methods",
    "q-bio.SC": "Subcellular Processes",
    "q-bio.TO": "Tissues and Organs",
    # Quantitative Finance
    "q-fin.CP": "Computational Finance",
    "q-fin.GN": "General Finance",
    "q-fin.MF": "Mathematical Finance",
    "q-fin.PM": "Portfolio Management",
    "q-fin.PR": "Pricing of Securities",
    "q-fin.RM": "Risk Management",
    "q-fin.ST": "Statistical Finance",
    "q-fin.TR": "Trading and Market Microstructure",
    # Statistics
    "stat.AP": "Applications",
    "stat.CO": "Computation",
    "stat.ME": "Methodology",
    "stat.ML": "Machine Learning",
    "stat.OT": "Other Statistics",
    # Electrical Engineering and Systems Science
    "eess.AS": "Audio and Speech Processing",
    "eess.IV": "Image and Video Processing",
    "eess.SP": "Signal Processing",
    "eess.SY": "Systems and Control",
    # Economics
    "econ.EM": "Econometrics",
    "econ.GN": "General Economics",
    "econ.TH": "Theoretical Economics",
}

# --- Official aliases: arXiv treats each pair as one category; the value is arXiv's canonical side.

_ALIASES: Final[dict[str, str]] = {
    "math.MP": "math-ph",
    "cs.SY": "eess.SY",
    "stat.TH": "math.ST",
    "q-fin.EC": "econ.GN",
    "math.IT": "cs.IT",
    "cs.NA": "math.NA",
}

# --- Legacy archives (pre-2000s subject areas) folded into modern categories ----------------------

_LEGACY: Final[dict[str, str]] = {
    "chao-dyn": "nlin.CD",
    "solv-int": "nlin.SI",
    "patt-sol": "nlin.PS",
    "adap-org": "nlin.AO",
    "comp-gas": "nlin.CG",
    "funct-an": "math.FA",
    "alg-geom": "math.AG",
    "dg-ga": "math.DG",
    "q-alg": "math.QA",
    "cmp-lg": "cs.CL",
    "supr-con": "cond-mat.supr-con",
    "mtrl-th": "cond-mat.mtrl-sci",
    "acc-phys": "physics.acc-ph",
    "atom-ph": "physics.atom-ph",
    "chem-ph": "physics.chem-ph",
    "ao-sci": "physics.ao-ph",
    "bayes-an": "physics.data-an",
    "plasm-ph": "physics.plasm-ph",
}

LABEL_LEVELS: Final[tuple[str, ...]] = ("archive", "category")

# Read-only public views of the source tables.
ARCHIVES: Final = MappingProxyType({code: name for code, (name, _) in _ARCHIVES.items()})
ALIASES: Final = MappingProxyType(dict(_ALIASES))
LEGACY: Final = MappingProxyType(dict(_LEGACY))


class UnknownCategoryError(ValueError):
    """A code that is not in the arXiv taxonomy; the message suggests close matches."""

    def __init__(
        self, code: object, suggestions: list[str] | None = None, kind: str = "category"
    ) -> None:
        self.code = code
        self.suggestions = list(suggestions or [])
        self.kind = kind
        message = f"unknown arXiv {kind} code {code!r}"
        if self.suggestions:
            message += "; did you mean " + ", ".join(repr(s) for s in self.suggestions) + "?"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[UnknownCategoryError], tuple[object, list[str], str]]:
        """Pickle by the original arguments so the error survives worker processes."""
        return (type(self), (self.code, self.suggestions, self.kind))


@dataclass(frozen=True, slots=True)
class Category:
    """One canonical arXiv category (or archive-level code) with its human names."""

    code: str
    name: str
    archive: str
    archive_name: str
    group: str
    coarse: bool


# --- Indexes, built once -------------------------------------------------------------------------


def _build_canonical() -> dict[str, Category]:
    """Build the canonical categories: every archive-level code plus every fine category."""
    has_subcategories = {code.split(".", 1)[0] for code in _FINE}
    table: dict[str, Category] = {}
    for code, (name, group) in _ARCHIVES.items():
        table[code] = Category(code, name, code, name, group, code in has_subcategories)
    for code, name in _FINE.items():
        arch = code.split(".", 1)[0]
        arch_name, group = _ARCHIVES[arch]
        table[code] = Category(code, name, arch, arch_name, group, False)
    return table


_CANONICAL: Final[dict[str, Category]] = _build_canonical()


def _build_index() -> dict[str, Category]:
    """Map every accepted code (canonical, alias, legacy) to its canonical Category."""
    index = dict(_CANONICAL)
    for source in (_ALIASES, _LEGACY):
        for old, new in source.items():
            if old in _CANONICAL:
                raise AssertionError(f"taxonomy: {old!r} is both canonical and an alias")
            index[old] = _CANONICAL[new]  # KeyError here means a broken table: fail at import.
    return index


_INDEX: Final[dict[str, Category]] = _build_index()
_ALL_CATEGORIES: Final[tuple[Category, ...]] = tuple(
    sorted(_CANONICAL.values(), key=lambda c: c.code)
)


def _suggest(code: str, pool: list[str]) -> list[str]:
    """Close matches for a bad code: case-insensitive hits first, then difflib, then its archive."""
    lowered = code.lower()
    found = [c for c in pool if c.lower() == lowered]
    by_lower: dict[str, list[str]] = {}
    for c in pool:
        by_lower.setdefault(c.lower(), []).append(c)
    for match in difflib.get_close_matches(lowered, list(by_lower), n=5, cutoff=0.6):
        found.extend(by_lower[match])
    if not found and "." in code:
        prefix = code.split(".", 1)[0].lower() + "."
        found = [c for c in pool if c.lower().startswith(prefix)]
    return list(dict.fromkeys(found))[:5]


def _get(code: str) -> Category:
    """Resolve any accepted code; the hot path is a single dict get."""
    cat = _INDEX.get(code) if isinstance(code, str) else None
    if cat is not None:
        return cat
    if not isinstance(code, str):
        raise UnknownCategoryError(code)
    stripped = code.strip()
    cat = _INDEX.get(stripped)
    if cat is None:
        raise UnknownCategoryError(stripped, _suggest(stripped, list(_INDEX)))
    return cat


# --- Public API ----------------------------------------------------------------------------------


def lookup(code: str) -> Category:
    """The canonical Category for a code, resolving aliases and legacy archives."""
    return _get(code)


def canonical(code: str) -> str:
    """The modern canonical code, so one subject never appears under two labels."""
    return _get(code).code


def is_known(code: str) -> bool:
    """Whether the code (modern, alias, legacy or archive-level) is in the taxonomy."""
    if not isinstance(code, str):
        return False
    return code in _INDEX or code.strip() in _INDEX


def archive_of(code: str) -> str:
    """The modern archive of a code, e.g. "cs.SY" -> "eess", "chao-dyn" -> "nlin"."""
    return _get(code).archive


def group_of(code: str) -> str:
    """The top-level group of a code, e.g. "hep-th" -> "Physics"."""
    return _get(code).group


def is_archive(code: str) -> bool:
    """Whether the code is itself a modern archive code (e.g. "cs", "hep-th")."""
    return isinstance(code, str) and code.strip() in _ARCHIVES


def archive_name(archive: str) -> str:
    """The human name of a modern archive code; legacy archives are not archives any more."""
    key = archive.strip() if isinstance(archive, str) else archive
    entry = _ARCHIVES.get(key) if isinstance(key, str) else None
    if entry is None:
        hint = _suggest(key, list(_ARCHIVES)) if isinstance(key, str) else []
        raise UnknownCategoryError(key, hint, kind="archive")
    return entry[0]


def label_for(code: str, level: str) -> str:
    """The training label of a code at a label level ("archive" or "category")."""
    if level == "archive":
        return archive_of(code)
    if level == "category":
        return canonical(code)
    raise ValueError(f"unknown label level {level!r}; expected one of {', '.join(LABEL_LEVELS)}")


def display_name(label: str) -> str:
    """A human name for a label, whether it is a category code or an archive code."""
    return _get(label).name


def label_name(label: str) -> str:
    """`display_name`, or the code itself for a label outside the arXiv taxonomy (custom data):
    reports and answers must name every label a model was trained on."""
    try:
        return display_name(label)
    except ValueError:
        return label


def all_categories() -> list[Category]:
    """Every canonical fine category and archive-level code, sorted by code (no aliases)."""
    return list(_ALL_CATEGORIES)


def all_archives() -> list[str]:
    """Every modern archive code, in taxonomy order (grouped by subject group)."""
    return list(_ARCHIVES)


def categories_in(archive: str) -> list[Category]:
    """The canonical fine categories of an archive (empty for single-category archives)."""
    arch = archive.strip()
    if arch not in _ARCHIVES:
        raise UnknownCategoryError(arch, _suggest(arch, list(_ARCHIVES)), kind="archive")
    return [c for c in _ALL_CATEGORIES if c.archive == arch and c.code != arch]
