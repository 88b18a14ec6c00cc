from tunesmith.evaluate.metrics import exact, json_exact, json_valid, score


def test_json_exact_ignores_key_order_and_spacing_but_not_values():
    reference = '{"intent": "lights_on", "slots": {"room": "kitchen"}}'
    assert json_exact('{"slots":{"room":"kitchen"},"intent":"lights_on"}', reference) == 1.0
    assert json_exact('{"intent": "lights_on", "slots": {"room": "garage"}}', reference) == 0.0
    assert json_exact('{"intent": "lights_on", "slots": {"room": "kitchen"}', reference) == 0.0  # truncated


def test_json_valid_wants_an_object():
    assert json_valid('{"a": 1}', "") == 1.0
    assert json_valid("[1, 2]", "") == 0.0
    assert json_valid("Sure! Here is the JSON: {}", "") == 0.0


def test_exact_strips_whitespace_only():
    assert exact(" yes\n", "yes") == 1.0
    assert exact("Yes", "yes") == 0.0
    assert score("1", "1", ["exact", "json_exact", "json_valid"]) == {"exact": 1.0, "json_exact": 1.0, "json_valid": 0.0}
