"""darkroom.conditioning: prompt syntax (`prompt_parser`, `prompt_schedule`), textual inversion (`embeddings`),
chunking (`chunks`) and text encoding (`encode`). Import the submodules; this package imports nothing."""
