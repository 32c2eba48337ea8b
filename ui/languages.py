"""The languages offered in a room's selector: value (the room's language) -> label.

Values are names or aliases of CodeMirror's language data (matched case-insensitively by the
editor); any other value a client sets is shown as it is, with plain-text editing.
"""

from __future__ import annotations

LANGUAGES: dict[str, str] = {
    "python": "Python",
    "javascript": "JavaScript",
    "typescript": "TypeScript",
    "java": "Java",
    "cpp": "C++",
    "c": "C",
    "csharp": "C#",
    "go": "Go",
    "rust": "Rust",
    "kotlin": "Kotlin",
    "swift": "Swift",
    "ruby": "Ruby",
    "php": "PHP",
    "scala": "Scala",
    "sql": "SQL",
    "shell": "Shell",
    "html": "HTML",
    "css": "CSS",
    "json": "JSON",
    "yaml": "YAML",
    "markdown": "Markdown",
    "plaintext": "Plain text",
}

_EXTENSIONS: dict[str, str] = {
    "python": "py",
    "javascript": "js",
    "typescript": "ts",
    "java": "java",
    "cpp": "cpp",
    "c": "c",
    "csharp": "cs",
    "go": "go",
    "rust": "rs",
    "kotlin": "kt",
    "swift": "swift",
    "ruby": "rb",
    "php": "php",
    "scala": "scala",
    "sql": "sql",
    "shell": "sh",
    "html": "html",
    "css": "css",
    "json": "json",
    "yaml": "yaml",
    "markdown": "md",
}


def label_for(language: str) -> str:
    return LANGUAGES.get(language, language)


def extension_for(language: str | None) -> str:
    return _EXTENSIONS.get((language or "").lower(), "txt")
