//! Chat templates: wraps one user message the way an instruction-tuned model saw its prompts.
//!
//! Models ship their template as Jinja text (`tokenizer.chat_template`). Rather than embed a Jinja
//! engine, the family is recognised by its markers and the single-user-turn case is rendered
//! directly, reproducing what `transformers`' `apply_chat_template(..., add_generation_prompt=True,
//! tokenize=False)` gives. Encode the result with `add_special_tokens = false`: when a template
//! emits the BOS token itself, so does the rendered text.

use anyhow::{anyhow, Result};

/// The template families this module can render.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatFormat {
    /// `<|im_start|>role\n...<|im_end|>\n` (SmolLM2, Qwen).
    ChatMl,
    /// `<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>` (Llama 3).
    Llama3,
    /// `[INST] ... [/INST]` (Llama 2, Mistral).
    Inst,
    /// `<start_of_turn>role\n...<end_of_turn>\n` (Gemma).
    Gemma,
}

/// Recognises a template's family by its turn markers.
pub fn detect_chat_format(template: &str) -> Option<ChatFormat> {
    [
        ("<|start_header_id|>", ChatFormat::Llama3),
        ("<start_of_turn>", ChatFormat::Gemma),
        ("<|im_start|>", ChatFormat::ChatMl),
        ("[INST]", ChatFormat::Inst),
    ]
    .into_iter()
    .find(|(marker, _)| template.contains(marker))
    .map(|(_, f)| f)
}

/// Wraps one user message in the model's chat template (recognised by the markers in the Jinja
/// text: ChatML `<|im_start|>` (SmolLM2, Qwen), Llama-3 `<|start_header_id|>`, Llama-2/Mistral
/// `[INST]`, Gemma `<start_of_turn>`), adding the generation prompt. A ChatML template's default
/// system message (SmolLM2's "You are a helpful AI assistant named SmolLM, ...") is reproduced.
pub fn apply_chat_template(template: Option<&str>, user_message: &str) -> Result<String> {
    let template = template.ok_or_else(|| {
        anyhow!("the model has no chat template (`tokenizer.chat_template`); use a raw prompt")
    })?;
    let format = detect_chat_format(template).ok_or_else(|| {
        let head: String = template.chars().take(120).collect();
        anyhow!(
            "unrecognised chat template (known: ChatML <|im_start|>, Llama 3 \
             <|start_header_id|>, Llama 2/Mistral [INST], Gemma <start_of_turn>): {head:?}..."
        )
    })?;
    // Llama 2/3 and Gemma templates trim the message (`| trim`, `.strip()`); ChatML does not.
    let msg = if template.contains("| trim") || template.contains(".strip()") {
        user_message.trim()
    } else {
        user_message
    };
    let bos = |token: &'static str| -> &'static str {
        if template.contains("bos_token") {
            token
        } else {
            ""
        }
    };
    Ok(match format {
        ChatFormat::ChatMl => {
            let system = chatml_default_system(template)
                .map(|s| format!("<|im_start|>system\n{s}<|im_end|>\n"))
                .unwrap_or_default();
            format!("{system}<|im_start|>user\n{msg}<|im_end|>\n<|im_start|>assistant\n")
        }
        ChatFormat::Llama3 => {
            let system = if template.contains("Cutting Knowledge Date") {
                // Llama 3.1+ always emits a system turn with these dates (`date_string` defaults
                // to 26 Jul 2024 when the caller passes none).
                "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December \
                 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
            } else {
                ""
            };
            format!(
                "{}{system}<|start_header_id|>user<|end_header_id|>\n\n{msg}<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\n",
                bos("<|begin_of_text|>")
            )
        }
        ChatFormat::Inst => {
            // Llama 2 and Mistral v0.1 close with " [/INST]", Mistral v0.3 with "[/INST]".
            let close = if template.contains(" [/INST]") {
                " [/INST]"
            } else {
                "[/INST]"
            };
            format!("{}[INST] {msg}{close}", bos("<s>"))
        }
        ChatFormat::Gemma => format!(
            "{}<start_of_turn>user\n{msg}<end_of_turn>\n<start_of_turn>model\n",
            bos("<bos>")
        ),
    })
}

/// The literal system message a ChatML template inserts when the conversation has none: the text
/// between `<|im_start|>system` + newline and `<|im_end|>`, when it is plain text rather than
/// Jinja that splices in the caller's system message.
fn chatml_default_system(template: &str) -> Option<String> {
    const OPEN: &str = "<|im_start|>system";
    let mut rest = template;
    while let Some(i) = rest.find(OPEN) {
        rest = &rest[i + OPEN.len()..];
        let body = rest.strip_prefix('\n').or_else(|| rest.strip_prefix("\\n"));
        let Some(body) = body else { continue };
        let Some(end) = body.find("<|im_end|>") else {
            continue;
        };
        let text = &body[..end];
        if !text.is_empty() && !text.contains(['\'', '"', '{', '}', '+']) {
            return Some(unescape_jinja(text));
        }
    }
    None
}

/// Undoes the escapes a Jinja string literal may contain.
fn unescape_jinja(s: &str) -> String {
    s.replace("\\n", "\n").replace("\\t", "\t")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_unknown_templates_are_errors() {
        let e = apply_chat_template(None, "hi").unwrap_err().to_string();
        assert!(e.contains("no chat template"), "{e}");
        let e = apply_chat_template(Some("{{ messages }}"), "hi")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unrecognised chat template"), "{e}");
    }

    #[test]
    fn chatml_without_default_system() {
        // Qwen3-style: the system turn only splices in the caller's message.
        let t = "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + \
                 messages[0].content + '<|im_end|>\\n' }}{%- endif %}{{'<|im_start|>' + \
                 message.role + '\\n' + message.content + '<|im_end|>' + '\\n'}}";
        assert_eq!(
            apply_chat_template(Some(t), "Hi").unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn chatml_escaped_default_system() {
        let t = "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a \
                 helpful assistant.<|im_end|>\\n' }}<|im_start|>";
        assert_eq!(
            apply_chat_template(Some(t), "Hi").unwrap(),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful \
             assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
