"""The original MI-Atlas study's rules (issue 25, (1)-(16)) put to the test on one model (chapter 08's "rules under
test" table) and chapter 00's strip of which hold.

Each rule reads what chapters 02-07 measured for the model and profile, never runs anything: rules (1)-(4), (11)
and (16) from chapter 02's stored atlas (`readers.load_atlas`), the others from the latest tagged claims of
chapters 04-07 (`Claim.tag`). A rule holds or fails only where the measurement's test supports a direction; a test
that cannot tell, or a measurement no chapter makes in this profile, is "not testable here" and says why. Each row
is a chapter-08 Claim (tag "08.rule<N>") graded by `evidence.claims.grade`, never above the claim it reads.

Modules: `catalog` (the rules, `Finding`), `readers` (atlas, cells, tagged claims, `cap`), `atlas_rules`,
`claim_rules`, `table` (`table`, `strip`).
"""

from .catalog import ANCHOR, RULES, VERDICTS, Finding, Rule
from .readers import cap, load_atlas
from .table import findings, strip, table

__all__ = ["ANCHOR", "RULES", "VERDICTS", "Finding", "Rule", "cap", "findings", "load_atlas", "strip", "table"]
