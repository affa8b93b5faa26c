"""Stage 5, publishing: execute the chapters and render the book (`book`), offline Altair charts (`charts`)."""
