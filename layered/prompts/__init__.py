"""Prompt layer: safe templates and grounded context."""

from layered.prompts.template import ChatPromptTemplate, render_text

__all__ = ["ChatPromptTemplate", "render_text"]
