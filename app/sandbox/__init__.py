"""The child-process protocol shared by conversion and proof: request/result files, limits,
heartbeats, the toolchain interpreter to use. Standard library only at import (the child may run
under another toolchain)."""
