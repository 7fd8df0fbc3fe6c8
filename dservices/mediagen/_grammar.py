"""MediaScript's grammar in Lark's EBNF (LALR(1)); docs/mediascript.md explains it."""

GRAMMAR = r"""
start: _item*
_item: function_decl | _statement

function_decl: "function" NAME "(" [param ("," param)*] ")" block
param: NAME ["=" expr]

block: "{" _statement* "}"

_statement: var_decl ";"
          | expr_stmt ";"
          | if_stmt
          | while_stmt
          | for_stmt
          | block
          | return_stmt ";"
          | break_stmt ";"
          | continue_stmt ";"
          | ";"

var_decl: ("var" | "let" | "const") NAME ["=" expr]
expr_stmt: expr
if_stmt: "if" "(" expr ")" _statement ["else" _statement]
while_stmt: "while" "(" expr ")" _statement
for_stmt: "for" "(" [for_init] ";" [expr] ";" [expr] ")" _statement
?for_init: var_decl | expr_stmt
return_stmt: "return" [expr]
break_stmt: "break"
continue_stmt: "continue"

?expr: assignment
?assignment: conditional
           | postfix ASSIGN_OP assignment -> assign
ASSIGN_OP: "=" | "+=" | "-=" | "*=" | "/=" | "%="
?conditional: or_expr
            | or_expr "?" expr ":" conditional -> conditional
?or_expr: and_expr
        | or_expr "||" and_expr -> or_op
?and_expr: equality
         | and_expr "&&" equality -> and_op
?equality: comparison
         | equality EQ_OP comparison -> binary
EQ_OP: "===" | "!==" | "==" | "!="
?comparison: sum
           | comparison CMP_OP sum -> binary
CMP_OP: "<=" | ">=" | "<" | ">"
?sum: product
    | sum ADD_OP product -> binary
ADD_OP: "+" | "-"
?product: unary
        | product MUL_OP unary -> binary
MUL_OP: "*" | "/" | "%"
?unary: postfix
      | UNARY_OP unary -> unary
UNARY_OP: "-" | "+" | "!"
?postfix: primary
        | postfix "." NAME -> member
        | postfix "[" expr "]" -> index
        | postfix "(" [_arguments] ")" -> call
        | postfix INCDEC -> incdec
INCDEC: "++" | "--"
?primary: NUMBER -> number
        | STRING -> string
        | TRUE -> true
        | FALSE -> false
        | NULL -> null
        | NAME -> name
        | "(" expr ")"
        | "[" [expr ("," expr)*] "]" -> array
        | "new" NAME "(" [_arguments] ")" -> new
TRUE: "true"
FALSE: "false"
NULL: "null"
_arguments: argument ("," argument)*
?argument: expr
         | NAME "@" expr -> named_arg

NAME: /[A-Za-z_$][A-Za-z0-9_$]*/
NUMBER: /(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?/
STRING: /"(\\.|[^"\\\n])*"/ | /'(\\.|[^'\\\n])*'/

COMMENT: /\/\/[^\n]*/ | /\/\*(.|\n)*?\*\//
%import common.WS
%ignore WS
%ignore COMMENT
"""
