package io.openim.callback.example;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonParseException;
import com.google.gson.JsonParser;
import com.google.gson.JsonPrimitive;
import com.google.gson.Strictness;
import com.google.gson.stream.JsonReader;
import com.google.gson.stream.JsonToken;
import java.io.IOException;
import java.io.StringReader;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;

/** The example policy's constants and text rules (examples/POLICY.md), free of any gRPC. */
final class Policy {
  /** Blocked words, matched ignoring case anywhere in a text; reported as spelt here. */
  static final List<String> BLOCKED_WORDS = List.of("forbidden", "spam");

  /** Error code of a rejection, from OpenIM's business range 20001-29999. */
  static final int REJECT_CODE = 20001;

  /** What each blocked word is replaced with. */
  static final String MASK = "***";

  /** The avatar of a new user who has none. */
  static final String DEFAULT_AVATAR = "https://example.com/avatar/default.png";

  /** The {@code ex} of a new group that has none. */
  static final String GROUP_TAG = "{\"createdVia\":\"openim-callback-gateway\"}";

  private static final int IGNORE_CASE = Pattern.CASE_INSENSITIVE | Pattern.UNICODE_CASE;

  private static final Map<String, Pattern> WORD_PATTERNS =
      BLOCKED_WORDS.stream()
          .collect(
              Collectors.toMap(word -> word, word -> Pattern.compile(Pattern.quote(word), IGNORE_CASE)));

  private static final Pattern ANY_WORD =
      Pattern.compile(
          BLOCKED_WORDS.stream().map(Pattern::quote).collect(Collectors.joining("|")), IGNORE_CASE);

  private Policy() {}

  /** The first blocked word (in list order) that {@code text} contains. */
  static Optional<String> blockedWord(String text) {
    return BLOCKED_WORDS.stream()
        .filter(word -> WORD_PATTERNS.get(word).matcher(text).find())
        .findFirst();
  }

  /** {@code text} with every blocked word masked, or empty when it contains none. */
  static Optional<String> mask(String text) {
    Matcher matcher = ANY_WORD.matcher(text);
    if (!matcher.find()) {
      return Optional.empty();
    }
    return Optional.of(matcher.replaceAll(Matcher.quoteReplacement(MASK)));
  }

  /**
   * Masks the blocked words in every string value of a message element such as
   * {@code {"content":"hello"}} and returns the element as compact JSON again (OpenIM requires a
   * JSON object string), or empty when nothing changed or the content is not a JSON object.
   */
  static Optional<String> maskJsonObject(String content) {
    JsonElement element;
    try (JsonReader reader = new JsonReader(new StringReader(content))) {
      // Gson parses leniently unless told otherwise; only real JSON is a valid message content.
      reader.setStrictness(Strictness.STRICT);
      element = JsonParser.parseReader(reader);
      if (reader.peek() != JsonToken.END_DOCUMENT) {
        return Optional.empty();
      }
    } catch (JsonParseException | IOException e) {
      return Optional.empty();
    }
    if (!element.isJsonObject()) {
      return Optional.empty();
    }
    // JsonObject keeps the keys in their original order; toString() writes compact JSON.
    return maskStrings(element).map(JsonElement::toString);
  }

  /**
   * {@code element} with the blocked words of every string inside it masked (objects and arrays
   * are changed in place), or empty when it contains none.
   */
  private static Optional<JsonElement> maskStrings(JsonElement element) {
    if (element.isJsonPrimitive() && element.getAsJsonPrimitive().isString()) {
      return mask(element.getAsString()).map(JsonPrimitive::new);
    }
    boolean changed = false;
    if (element.isJsonObject()) {
      for (Map.Entry<String, JsonElement> field : element.getAsJsonObject().entrySet()) {
        Optional<JsonElement> masked = maskStrings(field.getValue());
        if (masked.isPresent()) {
          field.setValue(masked.get());
          changed = true;
        }
      }
    } else if (element.isJsonArray()) {
      JsonArray items = element.getAsJsonArray();
      for (int i = 0; i < items.size(); i++) {
        Optional<JsonElement> masked = maskStrings(items.get(i));
        if (masked.isPresent()) {
          items.set(i, masked.get());
          changed = true;
        }
      }
    }
    return changed ? Optional.of(element) : Optional.empty();
  }
}
