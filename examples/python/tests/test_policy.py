"""Unit tests of the policy rules: .venv/bin/python -m unittest discover -s tests"""

import unittest

from openim_hook import policy


class PolicyTest(unittest.TestCase):
    def test_blocked_word_ignores_case_and_reports_the_listed_word(self):
        self.assertEqual(policy.blocked_word("this is SPAM"), "spam")
        self.assertEqual(policy.blocked_word("spam and Forbidden"), "forbidden")
        self.assertIsNone(policy.blocked_word("hello"))
        self.assertIsNone(policy.blocked_word(""))

    def test_mask(self):
        self.assertEqual(policy.mask("Spam, spam and FORBIDDEN eggs"), "***, *** and *** eggs")
        self.assertEqual(policy.mask("ünïcode spam ✓"), "ünïcode *** ✓")
        self.assertIsNone(policy.mask("spa"))

    def test_mask_content_json(self):
        self.assertEqual(
            policy.mask_content_json('{"content":"buy SPAM now","z":1,"a":["spam",true]}'),
            '{"content":"buy *** now","z":1,"a":["***",true]}',
        )
        self.assertEqual(
            policy.mask_content_json('{"content": "no Forbidden words"}'),
            '{"content":"no *** words"}',
        )
        self.assertIsNone(policy.mask_content_json('{"content":"hello"}'))
        self.assertIsNone(policy.mask_content_json('"spam"'), "not an object")
        self.assertIsNone(policy.mask_content_json("spam"), "not JSON")
        self.assertIsNone(policy.mask_content_json('{"a":NaN,"b":"spam"}'), "not JSON")


if __name__ == "__main__":
    unittest.main()
