"""procfs: pure parsers (bytes -> msgspec Structs), derived rates and the background sampler."""
