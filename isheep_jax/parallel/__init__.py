"""How arrays span devices and processes: the logical-axis rules and mesh, multi-process helpers."""
