"""Stage 4, evidence: metrics on logits (`metrics`), tests and intervals (`stats`), claims graded from
their evidence (`claims`), the run registry on disk (`registry`) and the graders' measured false-positive
rates on simulated nulls (`nulls`)."""
