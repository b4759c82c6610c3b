"""The default stage and provider, apart from the models so the scan can name them without pydantic."""

DEFAULT_STAGE = "dev"
DEFAULT_PROVIDER = "local"
