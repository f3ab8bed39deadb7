"""Ray Serve applications: the OpenAI-compatible Model API (`serve_apps.llm`) and robot policies."""
