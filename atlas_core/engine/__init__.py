"""Stage 2, intervening: the vocabulary (`interventions`: Site, Op, Edit, Unit), the one traced forward
(`tracing`, the only module that opens an nnsight trace), a prompt batch that applies units (`batch`),
many units x prompts into cached tidy rows (`sweep`) and the first-order attribution screen (`screen`)."""
