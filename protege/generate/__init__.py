"""Teacher data generation: recipes (prompt templates + parsers) run through a teacher."""

from protege.generate.config import GenerateConfig, GenerateResult
from protege.generate.run import run_generate

__all__ = ["GenerateConfig", "GenerateResult", "run_generate"]
