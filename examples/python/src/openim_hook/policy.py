"""The example policy's rules as plain functions (no gRPC here), see ../../../POLICY.md."""

import json
import re

#: Words a message, remark or group name must not contain, matched case-insensitively.
BLOCKED_WORDS = ("forbidden", "spam")
#: OpenIM errCode of a rejection; OpenIM's business range is 20001-29999.
REJECT_CODE = 20001
#: What each blocked word is replaced with when a hook modifies instead of rejecting.
MASK = "***"
#: Avatar given to a registering user who has none.
DEFAULT_AVATAR = "https://example.com/avatar/default.png"
#: The `ex` a new group gets when it has none.
GROUP_TAG = '{"createdVia":"openim-callback-gateway"}'

# One pattern per word, to report which word was found; and one for all of them, to mask them in a
# single pass (longest first, so that a word that starts with another is masked whole).
_WORD_PATTERNS = [(word, re.compile(re.escape(word), re.IGNORECASE)) for word in BLOCKED_WORDS]
_ANY_WORD = re.compile(
    "|".join(re.escape(word) for word in sorted(BLOCKED_WORDS, key=len, reverse=True)),
    re.IGNORECASE,
)


def blocked_word(text: str) -> str | None:
    """The first blocked word (in BLOCKED_WORDS order) that `text` contains, or None."""
    for word, pattern in _WORD_PATTERNS:
        if pattern.search(text):
            return word
    return None


def mask(text: str) -> str | None:
    """`text` with every blocked word replaced by MASK, or None when it contains none."""
    masked, count = _ANY_WORD.subn(MASK, text)
    return masked if count else None


def mask_content_json(content: str) -> str | None:
    """Masks the string values inside a message element such as '{"content":"hello"}'.

    Returns the element serialised again as compact JSON (OpenIM requires a JSON object string),
    or None when nothing changed or `content` is not a JSON object.
    """
    try:
        element = json.loads(content, parse_constant=_reject_constant)
    except ValueError:
        return None
    if not isinstance(element, dict):
        return None
    masked, changed = _mask_strings(element)
    if not changed:
        return None
    # Compact, keys in their original order, non-ASCII kept as is: only the masked words change.
    return json.dumps(masked, separators=(",", ":"), ensure_ascii=False)


def _mask_strings(value):
    """(value with every string inside it masked, whether anything changed)."""
    if isinstance(value, str):
        masked = mask(value)
        return (value, False) if masked is None else (masked, True)
    if isinstance(value, list):
        items = [_mask_strings(item) for item in value]
        return [item for item, _ in items], any(changed for _, changed in items)
    if isinstance(value, dict):
        fields = {key: _mask_strings(field) for key, field in value.items()}
        return {key: field for key, (field, _) in fields.items()}, any(
            changed for _, changed in fields.values()
        )
    return value, False


def _reject_constant(name: str):
    # Python's json accepts NaN and Infinity, which are not JSON: treat such content as not JSON.
    raise ValueError(f"not JSON: {name}")
