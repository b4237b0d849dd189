"""The request bodies of the server's routes, declared as pydantic models, and the error every refusal becomes.

Why the routes read their bodies themselves rather than through FastAPI's body parameters: a body is guarded
before anything parses it into models (its size as it streams in, UTF-8, JSON nesting depth: `genrec.serve.guards`),
and a field's limits are the server's (max_k and the catalog size, max_history, ...), handed to the models as
validation context (`Limits`). A body that does not fit its model is one 400 in the OpenAI error envelope whose
one-line message names the bad field (`parse`), never FastAPI's 422.

Fields the models do not declare are ignored (pydantic's default): OpenAI's sampling fields (temperature, top_p, ...) are accepted and
have no effect (the answer is a search's top-n items).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import (AfterValidator, BaseModel, BeforeValidator, Field, StrictBool, StrictFloat, StrictInt,
                      StrictStr, ValidationError, ValidationInfo, field_validator)
from pydantic_core import PydanticCustomError

from genrec.errors import GenrecError


class APIError(GenrecError):
    """A refusal with its HTTP status, sent as the OpenAI error envelope (`body`). Any other GenrecError that
    reaches a route is bad input: a 400 with its message."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.code, self.param = status, kind, code, param

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask of this server: the validation context of every model here."""

    max_k: int  # items one request may ask for (n, k): the server's max_k, at most the catalog size
    max_prompts: int  # prompts in one completions request
    max_history: int  # items in a history sent with a request (a stored one is trimmed instead)
    max_request_chars: int
    with_reasons: bool  # the model writes reasons: the default of `with_reasons`, and whether True is possible


def invalid(template: str, **context) -> PydanticCustomError:
    """A refusal of genrec's own, phrased to follow the field's name ("must be ...", "has ...")."""
    return PydanticCustomError("genrec", template, context)


def null_is(default) -> BeforeValidator:
    """JSON null reads as the field's default, as the OpenAI API reads it."""
    return BeforeValidator(lambda v: default if v is None else v)


def within_k(v: int, info: ValidationInfo) -> int:
    hi = info.context.max_k
    if not 1 <= v <= hi:
        raise invalid("must be between 1 and {hi}", hi=hi)
    return v


def an_id(v):
    """A user or item id: a string, or an integer as the users file allows (read as its string)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if not isinstance(v, str):
        raise invalid("must be a string")
    return v


def history_within_limit(v, info: ValidationInfo):
    """Counted before its items are read: a hostile list of 100,000 items is refused at once."""
    limit = info.context.max_history
    if isinstance(v, list) and len(v) > limit:
        raise invalid("has {n} items; the limit is {limit}", n=len(v), limit=limit)
    return v


def request_within_limit(v: str | None, info: ValidationInfo) -> str | None:
    limit = info.context.max_request_chars
    if v is not None and len(v) > limit:
        raise invalid("text is longer than {limit} characters", limit=limit)
    return v


Id = Annotated[StrictStr, BeforeValidator(an_id)]
Count = Annotated[StrictInt, AfterValidator(within_k)]


class UserFields(BaseModel):
    """Who to recommend for: the fields of a users-file line (`genrec generate --users`), sent in a body or as the
    JSON of a chat message or prompt. Their types and the server's limits are checked here; unknown users and items
    are refused later, by `genrec.infer.jobs.to_request`, in the words `genrec generate` uses."""

    user_id: Annotated[StrictStr | None, BeforeValidator(lambda v: v if v is None else an_id(v))] = None
    history: Annotated[list[Id] | None, BeforeValidator(history_within_limit)] = None  # ids or titles, oldest first
    context: dict[str, Any] | None = None
    request: Annotated[StrictStr | None, AfterValidator(request_within_limit)] = None  # natural-language text
    ratings: list[Annotated[StrictFloat, Field(allow_inf_nan=False)]] | None = None  # one per history item

    def sent(self) -> dict:
        """The user fields the client sent (as to_request reads them: a field sent as null is sent)."""
        return self.model_dump(include=set(UserFields.model_fields) & self.model_fields_set)


class SearchFields(BaseModel):
    """genrec's settings of a search, on every route."""

    with_reasons: StrictBool | None = Field(None, validate_default=True)  # default: the model gives reasons
    exclude_seen: Annotated[StrictBool, null_is(True)] = True

    @field_validator("with_reasons")
    @classmethod
    def reasons_the_model_writes(cls, v: bool | None, info: ValidationInfo) -> bool:
        if v is None:
            return info.context.with_reasons
        if v and not info.context.with_reasons:
            raise invalid("is true but this model was trained without reasons")
        return v


class StreamOptions(BaseModel):
    include_usage: Annotated[StrictBool, null_is(False)] = False


class OpenAIFields(SearchFields, UserFields):
    """What chat and completions requests share. The user fields may be sent beside the messages or prompts (the
    openai client's `extra_body`); a message's or prompt's own JSON fields take precedence."""

    model: StrictStr | None = None  # None, or the served model's name (else 404)
    n: Annotated[Count, null_is(1)] = Field(1, validate_default=True)  # choice i: the item ranked i+1
    stream: Annotated[StrictBool, null_is(False)] = False
    stream_options: StreamOptions | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def text_as_parts(v):
    """A message's content: a string is one text part."""
    if isinstance(v, str):
        return [{"type": "text", "text": v}]
    if v is not None and not isinstance(v, list):
        raise invalid("must be a string or a list of content parts")
    return v


class ContentPart(BaseModel):
    """A part of a message's content; parts other than text (image_url, ...) are read past."""

    type: StrictStr
    text: StrictStr | None = Field(None, validate_default=True)

    @field_validator("text")
    @classmethod
    def text_of_a_text_part(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("type") == "text":
            raise invalid("must be a string")
        return v


class ChatMessage(BaseModel):
    role: StrictStr
    content: Annotated[list[ContentPart] | None, BeforeValidator(text_as_parts)] = None

    def text(self) -> str:
        """The text parts, joined."""
        return "".join(p.text for p in self.content or () if p.type == "text")


class ChatCompletionRequest(OpenAIFields):
    """The last user message is the request: a JSON object of user fields, or plain text."""

    messages: list[ChatMessage]

    @field_validator("messages")
    @classmethod
    def a_user_message(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not v:
            raise invalid("must be a non-empty list of message objects")
        users = [m for m in v if m.role == "user"]
        if not users or users[-1].content is None:
            raise invalid("needs a user message with content")
        return v

    def user_text(self) -> str:
        return [m for m in self.messages if m.role == "user"][-1].text()


def prompts_within_limit(v, info: ValidationInfo):
    """A prompt is a string or a list of them; a list of 1 to max_prompts."""
    v = [v] if isinstance(v, str) else v
    hi = info.context.max_prompts
    if not isinstance(v, list) or not 1 <= len(v) <= hi:
        raise invalid("must be a string or a list of 1 to {hi} strings", hi=hi)
    return v


class CompletionRequest(OpenAIFields):
    """Each prompt is one request (a JSON object of user fields, or plain text); the choices follow in order."""

    prompt: Annotated[list[StrictStr], BeforeValidator(prompts_within_limit)]


class RecommendationRequest(SearchFields, UserFields):
    """The JSON of one `genrec generate` line's request: user fields and search settings."""

    k: Annotated[Count, null_is(10)] = Field(10, validate_default=True)


# how a pydantic error reads after the field's name (anything else: pydantic's own words)
SAYS = {"int_type": "must be an integer", "bool_type": "must be a boolean", "string_type": "must be a string",
        "float_type": "must be a number", "finite_number": "must be a finite number", "list_type": "must be a list",
        "dict_type": "must be an object", "model_type": "must be an object", "missing": "is required"}

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: dict, limits: Limits, where: str = "request") -> M:
    """`body` as `model`, or the APIError 400 of its first error: the search settings' before the user fields',
    as a request is read (settings, then who it is for); `where` names what held the user fields."""
    try:
        return model.model_validate(body, context=limits)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    raise refusal(min(errors, key=lambda e: bool(e["loc"]) and e["loc"][0] in UserFields.model_fields), where) \
        from None


def refusal(err: dict, where: str) -> APIError:
    """One pydantic error as one line. A user field's reads as `genrec generate` words a users-file line's
    ("request: history must be a list"), any other field's as the OpenAI API's ("'n' must be an integer")."""
    loc = err["loc"]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    says = err["msg"] if err["type"] == "genrec" else SAYS.get(err["type"], f"is not valid ({err['msg']})")
    field = str(loc[0]) if loc else None
    if field is None:
        return APIError(400, f"{where} {says}")
    if field in UserFields.model_fields:
        return APIError(400, f"{where}: {path} {says}", param=field)
    return APIError(400, f"'{path}' {says}", param=field)
