"""Real-browser tests of the Gradio page (Playwright driving Debian's chromium)."""
