"""Tool modules. Each module defines TOOL (or TOOLS) and optionally SERVICES; see perf_mcp.registry."""
