"""Data: sources (`data.source` -> rows), prompts (rows -> rendered `Prompt`s),
the seeded sampler, demonstrations as token ids, and the built-in tasks."""
