"""darkroom.metadata: A1111 infotext (`infotext`), image files with metadata (`png`, `naming`, `reading`) and the
ComfyUI workflow of a request (`workflow`). Import the submodules; nothing is loaded here."""
