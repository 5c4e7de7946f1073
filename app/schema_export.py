"""`python -m app.schema_export` prints the SDL; `make schema` writes it to schema.graphql."""

from app.main import schema


def sdl() -> str:
    return schema.as_str() + "\n"


if __name__ == "__main__":
    print(sdl(), end="")
