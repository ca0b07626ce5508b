"""IR helpers every stage reads: constants and shapes of values, small graph edits, facts about a model."""
