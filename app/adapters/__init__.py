"""The only code that touches a dependency's private names or undocumented behaviour: one module (or package) per
dependency, each pinned by a contract test in tests/adapters/ that fails first, and says what changed, when an
upgrade moves what it relies on."""
