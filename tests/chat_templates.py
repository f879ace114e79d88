"""Chat templates of our own that reproduce each model family's markers and habits (none is a model's own file):
how it lays out turns, lists tools, writes tool calls and results, reads list content, renders past reasoning,
opens a thinking block, and which variables switch thinking. The template tests render every one of them the
server's way and Transformers' way and require the same text."""

from __future__ import annotations

CHATML_TOOLS = """{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools

<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>
For each function call, return a json object within <tool_call></tool_call> XML tags.<|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first %}
{%- elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{{ message.content or '' }}
{%- for call in message.tool_calls or [] %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

QWEN3_THINK = """{%- set ns = namespace(last_query=messages | length - 1) %}
{%- for message in messages[::-1] %}{% set index = messages | length - 1 - loop.index0 %}
{%- if message.role == 'user' and ns.last_query == messages | length - 1 %}{% set ns.last_query = index %}{% endif %}
{%- endfor %}
{%- if tools %}<|im_start|>system
# Tools
<tools>{% for tool in tools %}
{{ tool | tojson }}{% endfor %}
</tools><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' %}<|im_start|>assistant
{% if loop.index0 > ns.last_query and message.reasoning_content %}<think>
{{ message.reasoning_content.strip('\\n') }}
</think>

{% endif %}{{ message.content }}
{%- if message.tool_calls %}{% for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>{% endfor %}{% endif %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}<think>

</think>

{% endif %}{% endif %}"""

QWEN3_CODER_XML = """{%- macro render_content(content) %}{% if content is string %}{{ content }}{% else %}
{%- for part in content %}{% if part.type == 'text' %}{{ part.text }}{% endif %}{% endfor %}{% endif %}{% endmacro %}
{%- if tools %}<|im_start|>system
# Tools
<tools>{% for tool in tools %}
<function><name>{{ tool.function.name }}</name></function>{% endfor %}
</tools><|im_end|>
{% endif %}
{%- for message in messages %}<|im_start|>{{ message.role if message.role != 'tool' else 'user' }}
{% if message.role == 'tool' %}<tool_response>
{{ render_content(message.content) }}
</tool_response>{% else %}{{ render_content(message.content) }}{% endif %}
{%- for call in message.tool_calls or [] %}
<tool_call>
<function={{ call.function.name }}>
{%- for key, value in call.function.arguments.items() %}
<parameter={{ key }}>
{{ value if value is string else value | tojson }}
</parameter>
{%- endfor %}
</function>
</tool_call>{% endfor %}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

LLAMA31 = """{{- bos_token }}<|start_header_id|>system<|end_header_id|>

{% if tools %}Environment: ipython
{% endif %}Cutting Knowledge Date: December 2023
{% if messages[0].role == 'system' %}
{{ messages[0].content | trim }}{% endif %}<|eot_id|>
{%- for message in messages %}
{%- if message.role == 'system' %}
{%- elif message.tool_calls %}<|start_header_id|>assistant<|end_header_id|>

{% for call in message.tool_calls %}{"name": "{{ call.function.name }}", "parameters": {{ call.function.arguments | tojson }}}{% endfor %}<|eom_id|>
{%- elif message.role == 'tool' %}<|start_header_id|>ipython<|end_header_id|>

{{ message.content | tojson if message.content is mapping else message.content }}<|eot_id|>
{%- else %}<|start_header_id|>{{ message.role }}<|end_header_id|>

{% if loop.last and tools and message.role == 'user' %}Given the following functions, respond with a JSON function call.

{% for tool in tools %}{{ tool | tojson(indent=4) }}

{% endfor %}{% endif %}{{ message.content | trim }}<|eot_id|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""

MISTRAL_V7 = """{{- bos_token }}
{%- if messages[0].role == 'system' %}[SYSTEM_PROMPT]{{ messages[0].content }}[/SYSTEM_PROMPT]{% set rest = messages[1:] %}
{%- else %}{% set rest = messages %}{% endif %}
{%- for message in rest %}
{%- if message.role == 'user' %}
{%- if loop.last and tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[INST]
{%- if message.content is string %}{{ message.content }}{% else %}{% for block in message.content %}{% if block.type == 'text' %}{{ block.text }}{% endif %}{% endfor %}{% endif %}[/INST]
{%- elif message.role == 'assistant' %}
{%- if message.content %}{{ message.content }}{% endif %}
{%- for call in message.tool_calls or [] %}[TOOL_CALLS]{{ call.function.name }}[ARGS]{{ call.function.arguments | tojson }}{% endfor %}{{ eos_token }}
{%- elif message.role == 'tool' %}[TOOL_RESULTS]{{ message.content }}[/TOOL_RESULTS]
{%- endif %}
{%- endfor %}"""

MAGISTRAL = """{{- bos_token }}[SYSTEM_PROMPT]{{ messages[0].content if messages[0].role == 'system' else 'First draft your thinking process between [THINK] and [/THINK].' }}[/SYSTEM_PROMPT]
{%- for message in messages %}
{%- if message.role == 'user' %}[INST]{{ message.content }}[/INST]
{%- elif message.role == 'assistant' %}{% if message.reasoning_content %}[THINK]{{ message.reasoning_content }}[/THINK]{% endif %}{{ message.content }}{{ eos_token }}
{%- endif %}
{%- endfor %}"""

GEMMA3 = """{{ bos_token }}
{%- if messages[0].role == 'system' %}{% set first = messages[0].content if messages[0].content is string else messages[0].content[0].text %}
{%- set first = first + '\\n\\n' %}{% set loop_messages = messages[1:] %}
{%- else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}
{%- for message in loop_messages %}
{%- set role = 'model' if message.role == 'assistant' else 'user' %}<start_of_turn>{{ role }}
{{ first if loop.first else '' }}
{%- if message.content is string %}{{ message.content | trim }}
{%- else %}{% for item in message.content %}{% if item.type == 'image' %}<start_of_image>{% elif item.type == 'text' %}{{ item.text | trim }}{% endif %}{% endfor %}
{%- endif %}<end_of_turn>
{% endfor %}
{%- if add_generation_prompt %}<start_of_turn>model
{% endif %}"""

DEEPSEEK_R1 = """{{ bos_token }}{% set ns = namespace(system='') %}
{%- for message in messages %}{% if message.role == 'system' %}{% set ns.system = message.content %}{% endif %}{% endfor %}{{ ns.system }}
{%- for message in messages %}
{%- if message.role == 'user' %}<｜User｜>{{ message.content }}
{%- elif message.role == 'assistant' and message.tool_calls %}<｜Assistant｜>{{ message.content or '' }}<｜tool▁calls▁begin｜>
{%- for call in message.tool_calls %}<｜tool▁call▁begin｜>function<｜tool▁sep｜>{{ call.function.name }}
```json
{{ call.function.arguments | tojson }}
```<｜tool▁call▁end｜>{% endfor %}<｜tool▁calls▁end｜><｜end▁of▁sentence｜>
{%- elif message.role == 'assistant' %}{% set content = message.content %}
{%- if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}<｜Assistant｜>{{ content }}<｜end▁of▁sentence｜>
{%- elif message.role == 'tool' %}<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{{ message.content }}<｜tool▁output▁end｜><｜tool▁outputs▁end｜>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<｜Assistant｜><think>
{% endif %}"""

DEEPSEEK_V31 = """{{ bos_token }}{% for message in messages %}
{%- if message.role == 'system' %}{{ message.content }}
{%- elif message.role == 'user' %}<｜User｜>{{ message.content }}
{%- elif message.role == 'assistant' %}<｜Assistant｜></think>{{ message.content }}
{%- if message.tool_calls %}<｜tool▁calls▁begin｜>{% for call in message.tool_calls %}<｜tool▁call▁begin｜>{{ call.function.name }}<｜tool▁sep｜>{{ call.function.arguments | tojson }}<｜tool▁call▁end｜>{% endfor %}<｜tool▁calls▁end｜>{% endif %}<｜end▁of▁sentence｜>
{%- elif message.role == 'tool' %}<｜tool▁output▁begin｜>{{ message.content }}<｜tool▁output▁end｜>
{%- endif %}{% endfor %}
{%- if add_generation_prompt %}<｜Assistant｜>{% if thinking is defined and thinking %}<think>{% else %}</think>{% endif %}{% endif %}"""

GLM45 = """[gMASK]<sop>
{%- if tools %}<|system|>
# Tools
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' %}<|user|>
{{ message.content }}{{ '/nothink' if enable_thinking is defined and not enable_thinking else '' }}
{%- elif message.role == 'assistant' %}<|assistant|>
{% if message.reasoning_content %}<think>{{ message.reasoning_content }}</think>{% else %}<think></think>{% endif %}
{{ message.content }}
{%- for call in message.tool_calls or [] %}
<tool_call>{{ call.function.name }}
{% for key, value in call.function.arguments.items() %}<arg_key>{{ key }}</arg_key>
<arg_value>{{ value if value is string else value | tojson }}</arg_value>
{% endfor %}</tool_call>{% endfor %}
{%- elif message.role == 'tool' %}<|observation|>
<tool_response>
{{ message.content }}
</tool_response>
{%- elif message.role == 'system' %}<|system|>
{{ message.content }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|assistant|>{{ '\\n<think></think>' if enable_thinking is defined and not enable_thinking else '' }}{% endif %}"""

GPT_OSS = """<|start|>system<|message|>You are a large language model.
Reasoning: {{ reasoning_effort | default('medium') }}
# Valid channels: analysis, commentary, final.<|end|>
{%- if tools %}<|start|>developer<|message|># Tools
namespace functions {
{% for tool in tools %}type {{ tool.function.name }} = (_: {{ tool.function.parameters | tojson }}) => any;
{% endfor %}}<|end|>{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' or message.role == 'system' %}<|start|>{{ 'user' if message.role == 'user' else 'developer' }}<|message|>{{ message.content }}<|end|>
{%- elif message.role == 'assistant' %}
{%- if message.thinking and loop.last %}<|start|>assistant<|channel|>analysis<|message|>{{ message.thinking }}<|end|>{% endif %}
{%- if message.tool_calls %}{% for call in message.tool_calls %}<|start|>assistant to=functions.{{ call.function.name }}<|channel|>commentary json<|message|>{{ call.function.arguments | tojson }}<|call|>{% endfor %}
{%- else %}<|start|>assistant<|channel|>final<|message|>{{ message.content }}<|end|>{% endif %}
{%- elif message.role == 'tool' %}<|start|>functions.{{ message.name | default('tool') }} to=assistant<|channel|>commentary<|message|>{{ message.content | tojson }}<|end|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start|>assistant{% endif %}"""

COMMAND_R7B = """{{ bos_token }}<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a helpful assistant.{% if tools %}
Tools:{% for tool in tools %}
{{ tool | tojson }}{% endfor %}{% endif %}<|END_OF_TURN_TOKEN|>
{%- for message in messages %}
{%- if message.role == 'user' %}<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{{ message.content }}<|END_OF_TURN_TOKEN|>
{%- elif message.role == 'system' %}<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{{ message.content }}<|END_OF_TURN_TOKEN|>
{%- elif message.role == 'assistant' %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>
{%- if message.reasoning_content %}<|START_THINKING|>{{ message.reasoning_content }}<|END_THINKING|>{% endif %}
{%- if message.tool_calls %}<|START_ACTION|>[{% for call in message.tool_calls %}{"tool_call_id": "{{ loop.index0 }}", "tool_name": "{{ call.function.name }}", "parameters": {{ call.function.arguments | tojson }}}{% if not loop.last %}, {% endif %}{% endfor %}]<|END_ACTION|>
{%- else %}<|START_RESPONSE|>{{ message.content }}<|END_RESPONSE|>{% endif %}<|END_OF_TURN_TOKEN|>
{%- elif message.role == 'tool' %}<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|><|START_TOOL_RESULT|>{{ message.content }}<|END_TOOL_RESULT|><|END_OF_TURN_TOKEN|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"""

LFM2 = """{{- bos_token }}{% set system = messages[0].content if messages[0].role == 'system' else '' %}
{%- if tools %}{% set system = system + ('\\n' if system else '') + 'List of tools: <|tool_list_start|>' + (tools | tojson) + '<|tool_list_end|>' %}{% endif %}
{%- if system %}<|im_start|>system
{{ system }}<|im_end|>
{% endif %}
{%- for message in messages %}{% if message.role != 'system' %}<|im_start|>{{ message.role }}
{% if message.role == 'assistant' %}{% generation %}
{%- if message.tool_calls %}<|tool_call_start|>[{% for call in message.tool_calls %}{{ call.function.name }}({% for key, value in call.function.arguments.items() %}{{ key }}={{ value | tojson }}{% if not loop.last %}, {% endif %}{% endfor %}){% if not loop.last %}, {% endif %}{% endfor %}]<|tool_call_end|>{% endif %}
{{- message.content }}<|im_end|>{% endgeneration %}
{% elif message.role == 'tool' %}<|tool_response_start|>{{ message.content }}<|tool_response_end|><|im_end|>
{% else %}{{ message.content }}<|im_end|>
{% endif %}{% endif %}{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

SMOLLM3 = """{%- set think = enable_thinking if enable_thinking is defined else true %}
{%- set system = messages[0].content if messages[0].role == 'system' else '' %}<|im_start|>system
## Metadata
Reasoning Mode: {{ '/think' if think else '/no_think' }}

## Custom Instructions
{{ system }}<|im_end|>
{% for message in messages %}{% if message.role != 'system' %}<|im_start|>{{ message.role }}
{% if message.role == 'assistant' and message.reasoning_content %}<think>
{{ message.reasoning_content }}
</think>
{% endif %}{{ message.content }}<|im_end|>
{% endif %}{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{{ '' if think else '<think>\\n\\n</think>\\n' }}{% endif %}"""

GRANITE = """{%- for message in messages %}<|start_of_role|>{{ message.role if message.role != 'tool' else 'tool_response' }}<|end_of_role|>
{%- if message.role == 'system' and thinking is defined and thinking %}Respond after thinking inside <think></think>. {% endif %}
{{- message.content }}
{%- if message.tool_calls %}<|tool_call|>[{% for call in message.tool_calls %}{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}{% if not loop.last %}, {% endif %}{% endfor %}]{% endif %}<|end_of_text|>
{% endfor %}
{%- if add_generation_prompt %}<|start_of_role|>assistant<|end_of_role|>{% endif %}"""

KIMI_K2 = """{%- for message in messages %}
{%- if message.role == 'system' %}<|im_system|>system<|im_middle|>{{ message.content }}<|im_end|>
{%- elif message.role == 'user' %}<|im_user|>user<|im_middle|>
{%- if message.content is string %}{{ message.content }}{% else %}{% for part in message.content %}{{ part.text }}{% endfor %}{% endif %}<|im_end|>
{%- elif message.role == 'assistant' %}<|im_assistant|>assistant<|im_middle|><think>{{ message.reasoning_content | default('') }}</think>{{ message.content }}
{%- if message.tool_calls %}<|tool_calls_section_begin|>{% for call in message.tool_calls %}<|tool_call_begin|>{{ call.id }}<|tool_call_argument_begin|>{{ call.function.arguments | tojson }}<|tool_call_end|>{% endfor %}<|tool_calls_section_end|>{% endif %}<|im_end|>
{%- elif message.role == 'tool' %}<|im_system|>tool<|im_middle|>## Return of {{ message.tool_call_id }}
{{ message.content }}<|im_end|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_assistant|>assistant<|im_middle|>{% endif %}"""

PHI4_REASONING = """<|im_start|>system<|im_sep|>You are Phi. Think inside <think> </think> first.<|im_end|>
{%- for message in messages %}<|im_start|>{{ message.role }}<|im_sep|>
{%- if message.role == 'assistant' and message.reasoning_content %}<think>{{ message.reasoning_content }}</think>{% endif %}{{ message.content }}<|im_end|>
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant<|im_sep|>{% endif %}"""

SEED_OSS = """<seed:bos>system
{{ messages[0].content if messages[0].role == 'system' else 'You are a helpful assistant.' }}<seed:eos>
{%- for message in messages %}{% if message.role != 'system' %}<seed:bos>{{ message.role }}
{% if message.role == 'assistant' and message.reasoning_content %}<seed:think>{{ message.reasoning_content }}</seed:think>{% endif %}{{ message.content }}
{%- for call in message.tool_calls or [] %}<seed:tool_call>
<function={{ call.function.name }}>
{% for key, value in call.function.arguments.items() %}<parameter={{ key }}>{{ value if value is string else value | tojson }}</parameter>
{% endfor %}</function>
</seed:tool_call>{% endfor %}<seed:eos>
{%- endif %}{% endfor %}
{%- if add_generation_prompt %}<seed:bos>assistant
{% if thinking_budget is defined and thinking_budget == 0 %}<seed:think></seed:think>{% endif %}{% endif %}"""

APRIEL = """<|system|>
Think first, starting with "Here are my reasoning steps:", then answer between [BEGIN FINAL RESPONSE] and [END FINAL RESPONSE].
{% for message in messages %}<|{{ message.role }}|>
{{ message.content }}
{%- if message.role == 'assistant' %}
[END FINAL RESPONSE]{% endif %}
{% endfor %}
{%- if add_generation_prompt %}<|assistant|>
Here are my reasoning steps:
{% endif %}"""

MINIMAX_M2 = """]~!b[]~b]system
{{ messages[0].content if messages[0].role == 'system' else 'You are MiniMax.' }}
{%- if tools %}
<tools>{% for tool in tools %}
<tool>{{ tool | tojson }}</tool>{% endfor %}
</tools>{% endif %}[e~[
{%- for message in messages %}{% if message.role == 'user' %}]~b]user
{{ message.content }}[e~[
{%- elif message.role == 'assistant' %}]~b]ai
{% if message.reasoning_content %}<think>
{{ message.reasoning_content }}
</think>
{% endif %}{{ message.content }}
{%- for call in message.tool_calls or [] %}
<minimax:tool_call>
<invoke name="{{ call.function.name }}">
{% for key, value in call.function.arguments.items() %}<parameter name="{{ key }}">{{ value }}</parameter>
{% endfor %}</invoke>
</minimax:tool_call>{% endfor %}[e~[
{%- elif message.role == 'tool' %}]~b]tool
<response>{{ message.content }}</response>[e~[
{%- endif %}{% endfor %}
{%- if add_generation_prompt %}]~b]ai
<think>
{% endif %}"""

FUNCTIONGEMMA = """{{ bos_token }}{% if tools %}<start_of_turn>developer
{% for tool in tools %}<start_function_declaration>declaration:{{ tool.function.name }}{{ tool.function.parameters | tojson }}<end_function_declaration>{% endfor %}<end_of_turn>
{% endif %}
{%- for message in messages %}<start_of_turn>{{ 'model' if message.role == 'assistant' else message.role }}
{%- if message.tool_calls %}{% for call in message.tool_calls %}<start_function_call>call:{{ call.function.name }}{
{%- for key, value in call.function.arguments.items() %}{{ key }}:{% if value is string %}<escape>{{ value }}<escape>{% else %}{{ value | tojson }}{% endif %}{% if not loop.last %},{% endif %}{% endfor %}}<end_function_call>{% endfor %}
{%- elif message.role == 'tool' %}<start_function_response>response:{{ message.content }}<end_function_response>
{%- else %}
{{ message.content }}{% endif %}<end_of_turn>
{% endfor %}
{%- if add_generation_prompt %}<start_of_turn>model
{% endif %}"""

POOLSIDE = """{%- for message in messages %}
{%- if message.role == 'assistant' %}<|assistant|>
{% generation %}{{ message.content }}{% if message.tool_calls %}
{% for call in message.tool_calls %}<call name="{{ call.function.name }}">{{ call.function.arguments | tojson }}</call>{% endfor %}{% endif %}<|end|>{% endgeneration %}
{% elif message.role == 'tool' %}<|tool|>
{{ message.content }}<|end|>
{% else %}<|{{ message.role }}|>
{{ message.content }}<|end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|assistant|>
{% endif %}"""

MISTRAL_NEMO = """{{- bos_token }}
{%- for message in messages %}
{%- if message.role == 'user' %}{% if loop.last and tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[INST]{{ message.content }}[/INST]
{%- elif message.role == 'assistant' and message.tool_calls %}[TOOL_CALLS][{% for call in message.tool_calls %}{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}, "id": "{{ call.id }}"}{% if not loop.last %}, {% endif %}{% endfor %}]{{ eos_token }}
{%- elif message.role == 'assistant' %}{{ message.content }}{{ eos_token }}
{%- elif message.role == 'tool' %}[TOOL_RESULTS]{"content": {{ message.content | tojson }}, "call_id": "{{ message.tool_call_id }}"}[/TOOL_RESULTS]
{%- elif message.role == 'system' %}{{ message.content }}
{%- endif %}
{%- endfor %}"""

FUNCTIONARY_V31 = """{{ bos_token }}<|start_header_id|>system<|end_header_id|>

{% if tools %}You have access to the following functions:
{% for tool in tools %}Use the function '{{ tool.function.name }}' to: {{ tool.function.description }}
{{ tool.function | tojson }}
{% endfor %}
Call a function as <function=example_function_name>{"example_name": "example_value"}</function>
{% endif %}<|eot_id|>
{%- for message in messages %}
{%- if message.role == 'tool' %}<|start_header_id|>ipython<|end_header_id|>

{{ message.content }}<|eot_id|>
{%- else %}<|start_header_id|>{{ message.role }}<|end_header_id|>

{{ message.content or '' }}
{%- for call in message.tool_calls or [] %}<function={{ call.function.name }}>{{ call.function.arguments | tojson }}</function>{% endfor %}
{%- if message.tool_calls %}<|eom_id|>{% else %}<|eot_id|>{% endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""

FUNCTIONARY_V32 = """{%- if tools %}<|start_header_id|>system<|end_header_id|>

// Supported function definitions that should be called when necessary.
namespace functions {
{% for tool in tools %}type {{ tool.function.name }} = (_: {{ tool.function.parameters | tojson }}) => any;
{% endfor %}} // namespace functions<|eot_id|>{% endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' %}<|start_header_id|>assistant<|end_header_id|>

{% if message.content %}>>>all
{{ message.content }}{% endif %}
{%- for call in message.tool_calls or [] %}>>>{{ call.function.name }}
{{ call.function.arguments | tojson }}{% endfor %}<|eot_id|>
{%- else %}<|start_header_id|>{{ message.role }}<|end_header_id|>

{{ message.content }}<|eot_id|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

>>>{% endif %}"""

GEMMA4 = """{{ bos_token }}{% if tools %}<|turn>system
{% for tool in tools %}<|tool>declaration:{{ tool.function.name }}{{ tool.function.parameters | tojson }}<tool|>{% endfor %}<turn|>
{% endif %}
{%- for message in messages %}<|turn>{{ 'model' if message.role == 'assistant' else message.role }}
{%- for call in message.tool_calls or [] %}<|tool_call>call:{{ call.function.name }}{
{%- for key, value in call.function.arguments.items() %}{{ key }}:{% if value is string %}<|"|>{{ value }}<|"|>{% else %}{{ value | tojson }}{% endif %}{% if not loop.last %},{% endif %}{% endfor %}}<tool_call|>{% endfor %}
{%- if message.role == 'tool' %}<|tool_response>{{ message.content }}<tool_response|>{% else %}
{{ message.content }}{% endif %}<turn|>
{% endfor %}
{%- if add_generation_prompt %}<|turn>model
{% endif %}"""

APERTUS = """{{ bos_token }}<|system_start|>You are Apertus.{% if tools %}
Tools:{% for tool in tools %} {{ tool.function | tojson }}{% endfor %}{% endif %}<|system_end|>
{%- for message in messages %}
{%- if message.role == 'user' %}<|user_start|>{{ message.content }}<|user_end|>
{%- elif message.role == 'assistant' %}<|assistant_start|>{{ message.content }}
{%- if message.tool_calls %}<|tools_prefix|>[{% for call in message.tool_calls %}{"{{ call.function.name }}": {{ call.function.arguments | tojson }}}{% if not loop.last %}, {% endif %}{% endfor %}]<|tools_suffix|>{% endif %}<|assistant_end|>
{%- elif message.role == 'tool' %}<|tool_response_start|>{{ message.content }}<|tool_response_end|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|assistant_start|>{% endif %}"""

# name -> template; every template here takes `messages` and the server's conversations.
TEMPLATES: dict[str, str] = {
    "chatml-tools": CHATML_TOOLS, "qwen3-think": QWEN3_THINK, "qwen3-coder-xml": QWEN3_CODER_XML, "llama-3.1": LLAMA31,
    "mistral-v7": MISTRAL_V7, "magistral": MAGISTRAL, "gemma-3": GEMMA3, "deepseek-r1": DEEPSEEK_R1,
    "deepseek-v3.1": DEEPSEEK_V31, "glm-4.5": GLM45, "gpt-oss": GPT_OSS, "command-r7b": COMMAND_R7B, "lfm2": LFM2,
    "smollm3": SMOLLM3, "granite": GRANITE, "kimi-k2": KIMI_K2, "phi-4-reasoning": PHI4_REASONING, "seed-oss": SEED_OSS,
    "apriel": APRIEL, "minimax-m2": MINIMAX_M2, "functiongemma": FUNCTIONGEMMA, "poolside": POOLSIDE,
    "mistral-nemo": MISTRAL_NEMO, "functionary-v3.1": FUNCTIONARY_V31, "functionary-v3.2": FUNCTIONARY_V32,
    "gemma4": GEMMA4, "apertus": APERTUS,
}

# What each template's tool calls are detected as ("derived": read off a rendering; None: no calls rendered).
TOOL_FAMILIES = {
    "chatml-tools": "hermes", "qwen3-think": "hermes", "qwen3-coder-xml": "qwen3-coder", "llama-3.1": "llama3",
    "mistral-v7": "mistral-v11", "mistral-nemo": "mistral", "deepseek-r1": "deepseek-r1", "deepseek-v3.1": "deepseek-v3.1",
    "glm-4.5": "glm-4.5", "gpt-oss": "gpt-oss", "command-r7b": "command-r7b", "lfm2": "lfm2", "granite": "granite",
    "kimi-k2": "kimi-k2", "seed-oss": "seed-oss", "minimax-m2": "minimax-m2", "functiongemma": "functiongemma",
    "functionary-v3.1": "functionary-v3.1", "functionary-v3.2": "functionary-v3.2", "gemma4": "gemma4",
    "apertus": "apertus", "poolside": "derived",
}

# What each template says of thinking: the format it is detected as (None: it does not think).
THINKING = {"qwen3-think": "think", "magistral": "magistral", "deepseek-r1": "think", "deepseek-v3.1": "think",
            "glm-4.5": "think", "gpt-oss": "harmony", "command-r7b": "command-r", "smollm3": "think",
            "granite": "think", "kimi-k2": "think", "phi-4-reasoning": "think", "seed-oss": "seed", "apriel": "apriel",
            "minimax-m2": "think"}
