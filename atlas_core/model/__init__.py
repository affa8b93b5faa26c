"""Stage 1, the subject: where weights come from (`sources`), how a family's modules are named (`archmap`),
the loaded model with its tokenizer and fingerprint (`subject`), and tiny random configs for tests (`tiny`)."""
